"""A small impacket client (PyPI ``impacket``): anonymous SMB login and LSA over ``\\pipe\\lsarpc``.

    python benchmarks/impacket_lsa.py ADDR PORT NAME

Port 139 speaks SMB1 (NT LM 0.12) over the NetBIOS session service, calling
the server by its NetBIOS name LABSRV; any other port lets impacket pick
SMB2/3. Then: bind LSARPC, LsarOpenPolicy2, LsarQueryInformationPolicy
(account domain), LsarLookupNames(NAME), LsarClose, logoff. Exit status 0
when the dialog ran to its end (an unmapped name is a valid answer), 1 on
any error (printed on stderr). impacket sends its process id as the SMB1 pid
and checks neither it nor the DCE-RPC call_id in answers.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    from impacket.dcerpc.v5 import lsad, lsat, transport
    from impacket.dcerpc.v5.dtypes import MAXIMUM_ALLOWED
    from impacket.smb import SMB_DIALECT
    from impacket.smbconnection import SMBConnection

    addr, port, name = argv[0], int(argv[1]), argv[2]
    dialect = SMB_DIALECT if port == 139 else None
    conn = SMBConnection("LABSRV", addr, sess_port=port, preferredDialect=dialect, timeout=5)
    conn.login("", "")
    rpc = transport.SMBTransport(addr, port, r"\lsarpc", smb_connection=conn)
    dce = rpc.get_dce_rpc()
    dce.connect()
    dce.bind(lsat.MSRPC_UUID_LSAT)
    policy = lsad.hLsarOpenPolicy2(dce, MAXIMUM_ALLOWED | lsat.POLICY_LOOKUP_NAMES)["PolicyHandle"]
    klass = lsad.POLICY_INFORMATION_CLASS.PolicyAccountDomainInformation
    info = lsad.hLsarQueryInformationPolicy(dce, policy, klass)
    print("domain", info["PolicyInformation"]["PolicyAccountDomainInfo"]["DomainName"])
    try:
        sid = lsat.hLsarLookupNames(dce, policy, (name,))["TranslatedSids"]["Sids"][0]
        print(name, sid["Use"], sid["RelativeId"])
    except lsat.DCERPCSessionError as exc:
        print(name, "not mapped", exc.get_error_code())
    lsad.hLsarClose(dce, policy)
    dce.disconnect()
    conn.logoff()
    conn.close()
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main(sys.argv[1:]))
    except Exception as exc:  # noqa: BLE001 - a benchmark client: any failure is a data point
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
