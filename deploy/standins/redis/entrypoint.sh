#!/bin/sh
# As the official image: redis-server runs as the redis user, with protected mode off
# (the official build changes that default); arguments given after it still win.
set -e
if [ "$1" = "redis-server" ]; then
  shift
  chown -R redis:redis /data
  exec setpriv --reuid=redis --regid=redis --init-groups redis-server --protected-mode no "$@"
fi
exec "$@"
