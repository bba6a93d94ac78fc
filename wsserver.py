"""Entry point of the websocket server: ``python wsserver.py`` (code in ``relay/live``)."""

from relay.live.server import main

if __name__ == "__main__":
    main()
