"""A small pysmb client (PyPI ``pysmb``): guest login and a listing of ``public``.

    python benchmarks/pysmb_ls.py ADDR PORT

Port 445 uses direct TCP (pysmb picks SMB2), port 139 the NetBIOS session
service calling LABSRV (pysmb picks SMB2 there too unless the server refuses
it). Exit status 0 when the listing came back, 1 on any error (printed on
stderr). pysmb matches answers by message id / mid only and takes the session
id from every session-setup answer (smb/base.py); its SMB1 pid is its process
id (smb/smb_structs.py).
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    from smb.SMBConnection import SMBConnection

    addr, port = argv[0], int(argv[1])
    conn = SMBConnection(
        "guest", "", "scanner", "LABSRV", use_ntlm_v2=True, is_direct_tcp=port != 139
    )
    if not conn.connect(addr, port, timeout=5):
        raise RuntimeError("login refused")
    for entry in conn.listPath("public", "/", timeout=5):
        print(entry.filename, entry.file_size)
    conn.close()
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main(sys.argv[1:]))
    except Exception as exc:  # noqa: BLE001 - a benchmark client: any failure is a data point
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
