#!/bin/sh
# Entrypoint of the dicom-gateway image: make the secret key on first start, then become the
# gateway (exec: it is PID 1 and gets SIGTERM from `docker stop` itself).
#
#   docker-entrypoint.sh [dicom-gateway arguments]     (default: serve --config ...)
#
# The config is the one the command will read: the --config argument, else $DICOM_GATEWAY_CONFIG,
# else /etc/dicom-gateway/gateway.toml. When it names a gateway.secret_file that does not exist,
# `dicom-gateway init-secret FILE --exist-ok` makes it (mode 0600) -- unless:
#   - DICOM_GATEWAY_SECRET is set: a secret_file wins over the variable, so the gateway would
#     silently use another key. Stop with exit status 2: set secret_file = "" to use the variable.
#   - the data folder already holds a pseudonym map (gateway.db) but no key: a new key would give
#     every patient a new pseudonym. Stop with exit status 2: restore the key from the backup.
# With secret_file = "" nothing is made: the gateway takes DICOM_GATEWAY_SECRET.
set -eu

umask 0077  # the spool, the quarantine, the database and the key are for this user only

config="${DICOM_GATEWAY_CONFIG:-/etc/dicom-gateway/gateway.toml}"
previous=""
for argument in "$@"; do
    case "$previous" in --config) config="$argument" ;; esac
    case "$argument" in --config=*) config="${argument#--config=}" ;; esac
    previous="$argument"
done

# The Python that runs dicom-gateway (it has tomllib); another one by $DICOM_GATEWAY_PYTHON.
gateway_bin="$(command -v dicom-gateway || true)"
if [ -z "$gateway_bin" ]; then
    echo "docker-entrypoint: dicom-gateway is not on PATH ($PATH)" >&2
    exit 127
fi
python="${DICOM_GATEWAY_PYTHON:-$(dirname "$gateway_bin")/python3}"
[ -x "$python" ] || python=python3

secret_file="$("$python" - "$config" <<'PY'
import os
import sys
import tomllib
from pathlib import Path

config = Path(sys.argv[1])
try:
    data = tomllib.loads(config.read_text(encoding="utf-8"))
except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
    sys.exit(0)  # the gateway itself reports an unreadable config, naming the problem
gateway = data.get("gateway")
gateway = gateway if isinstance(gateway, dict) else {}
name = gateway.get("secret_file", "")
if not name or not isinstance(name, str):
    sys.exit(0)  # the key comes from DICOM_GATEWAY_SECRET (or the gateway reports the type)
secret = Path(name).expanduser()
if os.environ.get("DICOM_GATEWAY_SECRET"):
    sys.exit(f"docker-entrypoint: DICOM_GATEWAY_SECRET is set, but {config} sets "
             f"gateway.secret_file = {name!r}, which wins over the variable; set "
             'secret_file = "" in the config to use the variable, or unset the variable')
if secret.exists():
    sys.exit(0)
data_dir = Path(str(gateway.get("data_dir") or "var")).expanduser()
if not gateway.get("database_url") and (data_dir / "gateway.db").exists():
    sys.exit(f"docker-entrypoint: {secret} is missing but {data_dir / 'gateway.db'} exists: a new "
             "secret would give every patient a new pseudonym. Restore the key from the backup "
             "of this pseudonym map (or move the map away to start afresh).")
folder = secret.parent
while not folder.exists() and folder != folder.parent:
    folder = folder.parent
if not os.access(folder, os.W_OK | os.X_OK):
    sys.exit(f"docker-entrypoint: cannot make {secret}: {folder} is not writable by uid "
             f"{os.getuid()} (owner uid {folder.stat().st_uid}); give the volume to this user, "
             f"e.g. chown -R {os.getuid()}:{os.getgid()} on the host folder")
print(secret)
PY
)" || exit 2

if [ -n "$secret_file" ]; then
    dicom-gateway init-secret "$secret_file" --exist-ok
fi

exec dicom-gateway "$@"
