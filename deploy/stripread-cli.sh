#!/bin/sh
# `stripread` for the people at the reader (installed as /usr/local/bin/stripread): the service's
# results and records, opened as the service's user. SQLite in WAL mode needs write access even to
# read, and calibration and QC records must stay writable by the service.
set -eu
if [ "$(id -un)" = stripread ]; then
    exec env STRIPREAD_DATA=/var/lib/stripread /opt/stripread/venv/bin/stripread "$@"
fi
exec sudo -u stripread env STRIPREAD_DATA=/var/lib/stripread /opt/stripread/venv/bin/stripread "$@"
