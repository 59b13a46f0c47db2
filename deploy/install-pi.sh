#!/usr/bin/env bash
# Install, upgrade or repair stripread on a Raspberry Pi (64-bit Raspberry Pi OS Bookworm or Trixie)
# as the `stripread` service. Idempotent: run it again after pulling a new version.
#
#   sudo deploy/install-pi.sh [SOURCE]     # SOURCE: a stripread checkout (default: this one) or wheel
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source_dir="${1:-$here/..}"
venv=/opt/stripread/venv

fail() { echo "install-pi: $*" >&2; exit 1; }
[[ $EUID -eq 0 ]] || fail "run it as root: sudo $0 $*"
[[ "$(uname -m)" == aarch64 ]] || fail "64-bit Raspberry Pi OS only: the pinned wheels are for aarch64"
# shellcheck source=/dev/null
. /etc/os-release
[[ "${VERSION_CODENAME:-}" =~ ^(bookworm|trixie)$ ]] || fail "Bookworm or Trixie only, not ${PRETTY_NAME:-this system}"

# picamera2 from Raspberry Pi's apt repository, built for its libcamera (pip's cannot be); its
# recommends are the Qt and OpenGL previews, which a headless reader does not need
apt-get update -q
apt-get install -y -q --no-install-recommends python3-venv python3-picamera2
apt-get install -y -q --no-install-recommends fonts-noto-cjk   # Chinese on the screen and in the plots (issue 21)

# a system user of its own: dialout opens the reader board's serial port, video the camera
id stripread >/dev/null 2>&1 ||
    useradd --system --user-group --home-dir /var/lib/stripread --no-create-home --shell /usr/sbin/nologin stripread
usermod --append --groups dialout,video stripread

# the venv sees apt's picamera2; everything else is a wheel pinned for aarch64
# (deploy/check_aarch64.py), so nothing is compiled here
[[ -x "$venv/bin/python" ]] || python3 -m venv --system-site-packages "$venv"
"$venv/bin/pip" install -q --upgrade --only-binary=:all: -c "$here/constraints-aarch64.txt" "$source_dir"
# a venv numpy of the wrong major version breaks apt's simplejpeg, which picamera2 imports
# (-I: the installed packages, not a checkout in the current directory)
"$venv/bin/python" -I -c "import picamera2, cv2, onnxruntime, device.cli.commands" ||
    fail "the installed packages do not import together (see above)"
lab_example="$("$venv/bin/python" -I -c \
    'import device, pathlib; print(pathlib.Path(device.__file__).with_name("data") / "lab.example.toml")')"

install -d -m 0750 -o stripread -g stripread /var/lib/stripread
install -d -m 0750 -o root -g stripread /etc/stripread
[[ -e /etc/stripread/stripread.env ]] || install -m 0640 -g stripread "$here/stripread.env" /etc/stripread/stripread.env
install -m 0644 "$lab_example" /etc/stripread/lab.example.toml
install -m 0755 "$here/stripread-cli.sh" /usr/local/bin/stripread

install -m 0644 "$here/60-stripread-board.rules" /etc/udev/rules.d/60-stripread-board.rules
udevadm control --reload
udevadm trigger --subsystem-match=tty
install -D -m 0644 "$here/journald-stripread.conf" /etc/systemd/journald.conf.d/stripread.conf
systemctl restart systemd-journald
install -m 0644 "$here/stripread.service" /etc/systemd/system/stripread.service
systemctl daemon-reload
systemctl enable stripread.service
systemctl restart stripread.service

version="$("$venv/bin/pip" show stripread | sed -n 's/^Version: //p')"
echo "stripread $version installed and started; follow it with: journalctl -u stripread -f"
