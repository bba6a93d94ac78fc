# Sourced by run.sh and test.sh: create .venv and install a requirements file when it changed.
# Usage: . scripts/venv.sh requirements.txt   (PYTHON=python3.12 picks the interpreter)
_req="${1:-requirements.txt}"
_py="${PYTHON:-python3}"
[ -x .venv/bin/python ] && _py=.venv/bin/python
# Checked before anything is created or installed: an older Python fails later, deep inside pip.
if ! "$_py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "error: needs Python 3.11 or newer; $_py is $("$_py" --version 2>/dev/null || echo 'not found')" \
    "(set PYTHON=python3.12, or delete .venv to recreate it)" >&2
  return 2 2>/dev/null || exit 2
fi
if [ ! -x .venv/bin/python ]; then
  echo "Creating .venv with $($_py --version)..."
  "$_py" -m venv .venv
fi
_stamp=".venv/.installed-$(basename "$_req")"
_want="$(cat requirements*.txt pyproject.toml | cksum)"  # cksum: POSIX, also on macOS (no sha256sum)
if [ "$(cat "$_stamp" 2>/dev/null)" != "$_want" ]; then
  echo "Installing $_req and this project (pip install -e .) into .venv..."
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -r "$_req"
  # The relay package, editable: its code stays in this checkout (index.html, migrations/ beside it).
  .venv/bin/python -m pip install --quiet --no-deps -e .
  echo "$_want" > "$_stamp"
fi
export PATH="$PWD/.venv/bin:$PATH"
