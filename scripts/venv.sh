# Sourced by run.sh and test.sh: create .venv and install a requirements file when it changed.
# Usage: . scripts/venv.sh requirements.txt
_req="${1:-requirements.txt}"
_py="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "Creating .venv with $($_py --version)..."
  "$_py" -m venv .venv
fi
_stamp=".venv/.installed-$(basename "$_req")"
_want="$(cat requirements*.txt | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$_stamp" 2>/dev/null)" != "$_want" ]; then
  echo "Installing $_req into .venv..."
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -r "$_req"
  echo "$_want" > "$_stamp"
fi
export PATH="$PWD/.venv/bin:$PATH"
