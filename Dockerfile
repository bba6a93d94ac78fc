# One image for every Python service; docker-compose.yml gives each its own command and health check.
#   docker build -t messages .
#   docker run --rm messages python -m relay.serve wsserver      (any process of relay/serve.py)
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    BIND_HOST=0.0.0.0 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
RUN useradd --system --create-home --uid 10001 --user-group app

# Runtime dependencies only, pinned; this layer is rebuilt only when requirements.txt changes.
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

# The code stays owned by root: the services never need to write to it.
COPY . .
USER app

EXPOSE 5000 5001 8765

# Services differ (compose overrides this per service); the default matches the default CMD.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "scripts/healthcheck.py", "http://127.0.0.1:5001/healthz"]

CMD ["python", "-m", "relay.serve", "list_api"]
