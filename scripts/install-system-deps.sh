#!/usr/bin/env bash
# Installs the real DICOM peers the tests use (Debian packages: dcmtk, dicom3tools, Orthanc as
# a real PACS, openssl for a test CA, tesseract for OCR of burned-in text, PostgreSQL for the
# shared-state tests), only where they are missing.
set -euo pipefail
need=()
command -v storescu >/dev/null 2>&1 || need+=(dcmtk)
command -v dciodvfy >/dev/null 2>&1 || need+=(dicom3tools)
command -v Orthanc >/dev/null 2>&1 || need+=(orthanc)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v tesseract >/dev/null 2>&1 || need+=(tesseract-ocr)  # OCR of burned-in text (gateway/pixels)
# The server programs (initdb, pg_ctl); tests/pgserver.py starts its own server on a free port.
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
# The web console's browser tests (Playwright drives this Chromium; its own download is not used).
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  sudo="sudo"
fi
echo "installing ${need[*]} (apt-get)"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
