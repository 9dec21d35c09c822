"""``cxr-embed store info | verify | repair``: inspect, check and repair an embedding store."""
from __future__ import annotations

import argparse
import json

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``store`` subcommand group (``info``, ``verify``, ``repair``).

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        The object returned by ``ArgumentParser.add_subparsers``.

    Examples
    --------
    >>> import argparse
    >>> parser = argparse.ArgumentParser()
    >>> register(parser.add_subparsers(dest="command"))
    >>> parser.parse_args(["store", "info", "emb.h5", "--json"]).json
    True
    >>> parser.parse_args(["store", "verify", "emb.h5"]).store_command
    'verify'
    """
    s = subparsers.add_parser("store", help="inspect, verify or repair an embedding store",
                              description="Inspect, verify or repair an HDF5 embedding store written by cxr_embed.")
    ssub = s.add_subparsers(dest="store_command", metavar="ACTION")
    info = ssub.add_parser("info", help="backbones, counts, dimensions and configuration of a store")
    info.add_argument("store", help="HDF5 store")
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.set_defaults(func=_cmd_store_info)
    verify = ssub.add_parser(
        "verify", help="check every row, id and attribute against the store's checksums",
        description="Read every group and pending journal batch completely and check them (HDF5 errors, lengths, "
                    "SHA-256 digests, fletcher32). Exit status 0 when intact, 1 when something is damaged.")
    verify.add_argument("store", help="HDF5 store")
    verify.add_argument("--json", action="store_true", help="print the report as one JSON object")
    verify.set_defaults(func=_cmd_store_verify)
    repair = ssub.add_parser(
        "repair", help="keep every intact row: move damaged journal batches and rows aside",
        description="Move damaged journal batches to STORE.quarantine/, rewrite the main file with every row whose "
                    "checksum holds (the damaged original is kept in the quarantine folder), then compact. The "
                    "next extract recomputes what was dropped. Exit status 0 when the store is intact afterwards.")
    repair.add_argument("store", help="HDF5 store")
    repair.add_argument("--json", action="store_true", help="print the report as one JSON object")
    repair.set_defaults(func=_cmd_store_repair)
    s.set_defaults(func=lambda args: (s.print_help(), 2)[1])


def _report(report, as_json: bool) -> int:
    if as_json:
        print(json.dumps(report.to_dict(), default=str))
    else:
        print(report)
    return 0 if report.ok else 1


def _cmd_store_verify(args: argparse.Namespace) -> int:
    import cxr_embed

    return _report(cxr_embed.EmbeddingStore(args.store, mode="r").verify(), args.json)


def _cmd_store_repair(args: argparse.Namespace) -> int:
    import cxr_embed

    return _report(cxr_embed.EmbeddingStore(args.store, mode="a").repair(), args.json)


def _cmd_store_info(args: argparse.Namespace) -> int:
    import cxr_embed

    info = cxr_embed.EmbeddingStore(args.store, mode="r").info()
    if args.json:
        print(json.dumps(info, default=str))
        return 0
    print(f"store:    {info['path']}")
    print(f"format:   {info['format']} v{info.get('format_version')}  (library {info.get('library_version')}, "
          f"tensorflow {info.get('tensorflow_version', 'unknown')})")
    print(f"created:  {info.get('created')}   updated: {info.get('updated')}")
    if info.get("pending_journal_batches"):
        print(f"journal:  {info['pending_journal_batches']} batches not yet compacted (a writer is running or was killed)")
    if not info["backbones"]:
        print("backbones: none")
    for fp, b in info["backbones"].items():
        cfg = b["config"]
        name = cfg.get("name", "?") if isinstance(cfg, dict) else "?"
        print(f"- {fp[:12]}  {name}: {b['count']} embeddings x {b['dim']} ({b['dtype']})")
        print(f"    config: {json.dumps(cfg, sort_keys=True, default=str)}")
        for c in b.get("compute", []):
            print(f"    computed: {c.get('precision')} on {c.get('replicas')} device(s) {c.get('devices')}"
                  f"{' with XLA' if c.get('xla') else ''}")
    return 0
