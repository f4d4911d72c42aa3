"""nginx `proxy_pass` to the same stub: the physical floor a reverse proxy can reach here.

Debian's `nginx` package. When it is missing and the benchmark runs as root with apt-get, it
is installed (`apt-get install nginx`; the package does not start a service in a container
with a `policy-rc.d`, and the benchmark never uses one: it runs its own nginx). When it cannot
be had the benchmark measures everything else and says loudly that the nginx row is skipped.

One process (`master_process off`), one worker's event loop, pinned to the proxy core like
the other proxies, access log off, keep-alive to the stub (pool 100, as the Python proxies),
and no per-connection request limit on either side (the Python proxies have none).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

SEARCH_PATH = os.pathsep.join((os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"))

CONFIG = """\
daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    keepalive_requests 1000000;
    upstream stub {{
        server 127.0.0.1:{stub_port};
        keepalive 100;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://stub;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def find_nginx(install: bool) -> tuple[str | None, str]:
    """(path to nginx, "") or (None, why not). Installs the Debian package when allowed."""
    found = shutil.which("nginx", path=SEARCH_PATH)
    if found:
        return found, ""
    if not install:
        return None, "nginx is not installed (apt-get install nginx) and --no-install was given"
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return None, "nginx is not installed, and installing it needs root and apt-get"
    print("installing nginx (apt-get install nginx) for the physical-floor row", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install_cmd = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "nginx"]
    for attempt in ([install_cmd], [["apt-get", "update", "-qq"], install_cmd]):
        if all(
            subprocess.run(step, env=env, capture_output=True, check=False).returncode == 0
            for step in attempt
        ):
            break
    found = shutil.which("nginx", path=SEARCH_PATH)
    return (found, "") if found else (None, "apt-get install nginx failed")


def nginx_command(binary: str, prefix: Path, port: int, stub_port: int) -> list[str]:
    """The command line of an nginx proxying 127.0.0.1:port to the stub, files under prefix."""
    prefix.mkdir(parents=True, exist_ok=True)
    config = prefix / "nginx.conf"
    config.write_text(CONFIG.format(prefix=prefix, port=port, stub_port=stub_port))
    # -e: the error log before the configuration is read (else /var/log/nginx/error.log).
    return [binary, "-p", str(prefix), "-c", str(config), "-e", str(prefix / "error.log")]
