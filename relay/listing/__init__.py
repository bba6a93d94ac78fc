"""The list API process: keyset-paginated listing of every stored message, and the live page."""
