"""`stripread` command line: its parser and the core commands (the technicians' are in
technician.py). A reader is put together by device/runtime/wiring.py from the parsed options.
Exit codes (terminal.py): 0 ok, 1 the reading was refused (an error code of the result schema),
2 bad usage or an unusable card/product file, 3 an internal error."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
from pathlib import Path

from calibration.errors import ReadError, SpecError
from device.cli import technician
from device.cli.options import alert_option, db_option, display_options, service_options, spec_options
from device.cli.terminal import EXIT_INTERNAL, EXIT_OK, EXIT_REFUSED, EXIT_USAGE, progress
from device.language.i18n import LanguageError
from device.runtime.wiring import ReaderSetup


def _words(args):
    """The device's language and report style (what a person reads; stored results and lab
    messages stay in UCUM): --lang / --units, else $STRIPREAD_LANG / $STRIPREAD_REPORT_STYLE."""
    from device.language.i18n import Words, choose_locale, choose_style
    return Words(choose_locale(getattr(args, "lang", None)), choose_style(getattr(args, "units", None)))


def _refusal(code: str, message: str) -> dict:
    from device.reading.result import refused
    return refused(code, message).to_dict()


def format_table(result: dict, words=None) -> str:
    """A short table a nurse can read at a glance, in the device's language and report style
    (device/cli/report.py; English and conventional units without `words`)."""
    from device.language.i18n import Words
    from device.cli.report import table
    return table(result, words or Words())


def cmd_read(args) -> int:
    from calibration.decode import check_limits, read_photo
    words = _words(args)         # an unknown --lang or --units is bad usage, whatever the photo
    try:
        data, captured = read_photo(args.photo)
        check_limits(data)         # a bomb is refused before OpenCV and the pad model are loaded
    except ReadError as err:       # missing, not a regular file, too large, a bomb
        from calibration.specs import load_card, load_product
        load_product(args.product)     # an unusable product or card file is still bad usage
        load_card(args.card)
        print(f"stripread: {args.photo}: {err.message}", file=sys.stderr)
        result = _refusal(err.code, err.message)
    else:
        try:
            result = ReaderSetup.from_args(args).reader().read(data, captured_at=captured)
        except ReadError as err:   # the model could not be loaded: refuse rather than misread
            print(f"stripread: {getattr(err, 'detail', err.message)}", file=sys.stderr)
            result = _refusal(err.code, err.message)
    print(json.dumps(result, indent=1, allow_nan=False) if args.json else format_table(result, words))
    return EXIT_OK if result["status"] == "ok" else EXIT_REFUSED


def cmd_train(args) -> int:
    """Train the pad models of a product on synthetic scenes and/or real labelled captures."""
    from calibration.specs import load_card, load_product
    from models import dataset, train
    product, card = load_product(args.product), load_card(args.card)
    parts, rows = [], []
    if args.synthetic:
        print(f"rendering and observing {args.synthetic} synthetic scenes of {product.id}", file=sys.stderr)
        rows = dataset.synthetic_rows(args.product, args.card, args.synthetic, args.seed, args.jobs, progress,
                                      Path(args.photos) if args.photos else None)
        parts.append(dataset.from_rows(product, rows))
    if args.data:
        print(f"observing the labelled captures in {args.data}", file=sys.stderr)
        parts.append(dataset.real_captures(product, card, Path(args.data), progress))
    if not parts:
        print("stripread: nothing to train on: give --synthetic N and/or --data DIR", file=sys.stderr)
        return EXIT_USAGE
    data = dataset.merge(parts)
    print("choosing each analyte's margin over nearest colour, one domain of the rendered scenes held out at a time",
          file=sys.stderr)
    margins, table = train.choose_margins(product, rows, args.seed)
    print(train.format_margin_table(margins, table), file=sys.stderr)
    print(f"fitting models on {data.photos - data.refused} photos ({data.refused} refused)", file=sys.stderr)
    out = train.export(train.train(data, args.seed), data, Path(args.out or f"{product.id}.onnx"), margins, table)
    print(json.dumps({"model": str(out), "bytes": out.stat().st_size, "photos": data.photos,
                      "refused": data.refused, "training_data_sha256": data.digest(), "model_margin": margins}))
    return EXIT_OK


def cmd_card_print(args) -> int:
    from calibration.card_art import write_card
    from calibration.specs import load_card
    for path in write_card(load_card(args.card), Path(args.out), args.dpi):
        print(path)
    return EXIT_OK


def cmd_simulate(args) -> int:
    """A photo from the spectral simulator, for trying the reader without a camera."""
    from device.runtime.wiring import simulated_photo
    data, spec, truth = simulated_photo(args.product, args.card, args.seed, args.fault)
    Path(args.out).write_bytes(data)
    expected = {a: t.level for a, t in truth.pads.items()}
    print(json.dumps({"photo": args.out, "illuminant": spec.illuminant, "camera": spec.camera,
                      "expected_error": truth.expected_error, "expected_levels": expected}))
    return EXIT_OK


def cmd_history(args) -> int:
    from device.store.results import ResultStore
    with ResultStore(args.db, readonly=True) as store:
        records = store.history(args.patient, args.limit)
    if not records:
        print("no stored results" + (" for this patient" if args.patient else ""))
        return EXIT_OK
    rows = [("#", "stored (UTC)", "patient", "status", "findings")]
    for r in records:
        reading = r.reading
        if reading.ok:
            findings = ", ".join(reading.findings()) or "all within normal"
        else:
            findings = reading.error.code if reading.error else ""
        rows.append((str(r.seq), r.stored_at[:19].replace("T", " "), r.patient_id or "-", reading.status, findings))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row[:4], widths)) + "  " + row[4])
    return EXIT_OK


def cmd_trend(args) -> int:
    """A patient's analytes over time: a line each on the terminal, and a PNG plot."""
    from device.store.results import ResultStore
    from device.monitoring.trends import pad_of, series, trend_png
    from device.language.plain import level_words
    with ResultStore(args.db, readonly=True) as store:
        lines = series(list(reversed(store.history(args.patient, args.limit))))
    words = _words(args)
    if not lines:
        print(words("no readings of this patient"))
        return EXIT_REFUSED
    for line in lines:
        points = line["points"]
        change = points[-1]["position"] - points[0]["position"]
        direction = words("rising") if change >= 0.5 else words("falling") if change <= -0.5 else words("steady")
        flagged = sum(p["abnormal"] for p in points)
        print(words("{code} {count} tests, latest {level} ({date}), {direction}; {flagged} outside the usual range",
                    code=f"{line['analyte']:5}", count=f"{len(points):3}",
                    level=level_words(pad_of(line), points[-1]["level"], words) if pad_of(line) else points[-1]["level"],
                    date=points[-1]["date"], direction=direction, flagged=flagged))
    out = args.out or "trend.png"
    trend_png(lines, out, words)
    print(words("plot: {path}", path=out))
    return EXIT_OK


def cmd_export(args) -> int:
    """Every stored result as JSON lines or as CSV (one row per pad) for a spreadsheet."""
    import csv
    from device.store.results import ResultStore
    out = open(args.out, "w", newline="", encoding="utf-8") if args.out else sys.stdout
    with ResultStore(args.db, readonly=True) as store:
        if args.format == "json":
            for r in store.iter_results():
                out.write(json.dumps({"seq": r.seq, "result_id": r.result_id, "stored_at": r.stored_at,
                                      "patient_id": r.patient_id, "operator_id": r.operator_id, "hash": r.hash,
                                      "result": r.result}) + "\n")
        else:
            writer = csv.writer(out)
            writer.writerow(["seq", "result_id", "stored_at", "patient_id", "operator_id", "status", "product",
                             "analyte", "level", "value", "unit", "confidence", "flags", "model_version", "hash"])
            for r in store.iter_results():
                res = r.result
                base = [r.seq, r.result_id, r.stored_at, r.patient_id, r.operator_id, res.get("status"),
                        res.get("product")]
                tail = [res.get("provenance", {}).get("model_version"), r.hash]
                for a in res.get("analytes") or [{}]:
                    writer.writerow(base + [a.get("analyte"), a.get("level"), a.get("value"), a.get("unit"),
                                            a.get("confidence"), ";".join(a.get("flags", ()))] + tail)
    if args.out:
        out.close()
    return EXIT_OK


def cmd_verify(args) -> int:
    """Check the store without writing to it: SQLite's integrity check, the hash chain, every
    record's signature and the checkpoint beside the file. Exit 1 naming the records and why when
    anything was damaged, altered, removed or emptied. `--export-key` prints the device's public key."""
    from device.store import signing
    from device.store.results import examine
    key = None
    try:
        if args.export_key:
            key = signing.DeviceKey.load(signing.key_path(Path(args.db)))
            print(key.pem(), end="")
            print(f"key id {key.id}", file=sys.stderr)
            return EXIT_OK
        if args.public_key:
            key = signing.PublicKey.from_pem(Path(args.public_key).read_bytes())
        else:          # the device key, when this user may read it (a note says when signatures went unchecked)
            with contextlib.suppress(FileNotFoundError, PermissionError):
                key = signing.DeviceKey.load(signing.key_path(Path(args.db)), create=False)
    except (OSError, ValueError) as exc:
        print(f"stripread: cannot read or create the key: {exc}", file=sys.stderr)
        return EXIT_USAGE
    found = examine(args.db, key)
    for note in found.notes:
        print(note)
    if not found.sound:
        print(f"{found.records} record(s) read from {args.db}: NOT INTACT")
        for problem in found.problems:
            print(f"  {problem}")
        return EXIT_REFUSED
    signed = f", signatures valid (key {key.id})" if key and found.signed else ""
    print(f"{found.records} records, hash chain intact{signed}")
    return EXIT_OK


def cmd_backup(args) -> int:
    """A consistent copy of the store (SQLite's online backup: the service may keep running) with
    its checkpoint beside it; restore by copying both back while the service is stopped (README)."""
    from device.store.results import ResultStore
    with ResultStore(args.db, readonly=True) as store:
        try:
            checkpoint = store.backup(args.dest)
        except FileExistsError as exc:
            print(f"stripread: {exc}", file=sys.stderr)
            return EXIT_USAGE
    print(f"backed up to {args.dest}" + (f" ({checkpoint.count} records up to #{checkpoint.seq}, checkpoint "
                                         f"beside it)" if checkpoint else ""))
    return EXIT_OK


def _lab_config(args):
    """The lab configuration, or None (a message printed) when there is none or it is unusable."""
    from device.lab.config import LabConfigError, find_config, load_config
    path = find_config(args.lab_config)
    if path is None:
        print("no lab is configured: write /etc/stripread/lab.toml (see device/data/lab.example.toml) or pass "
              "--lab-config", file=sys.stderr)
        return None
    try:
        return load_config(path)
    except LabConfigError as exc:
        print(exc, file=sys.stderr)
        return None


def cmd_sync(args) -> int:
    """One pass of the outbox to the lab, with progress and a summary; or the outbox's state.
    Exit 0 when nothing is left to send and nothing was rejected, 1 otherwise, 2 without a usable
    lab configuration."""
    from device.store.results import ResultStore
    with ResultStore(args.db) as store:
        if args.retry_failed:
            print(f"{store.retry_failed()} rejected result(s) queued again")
        if args.status:
            counts = store.outbox_counts()
            print(f"{counts['pending']} pending, {counts['failed']} failed, {counts['sent']} sent")
            for seq, _, attempts, error in store.failures():
                print(f"  record #{seq} failed after {attempts} attempt(s): {error}")
            return EXIT_OK if counts["pending"] == counts["failed"] == 0 else EXIT_REFUSED
        config = _lab_config(args)
        if config is None:
            return EXIT_USAGE
        from device.lab.sync import Syncer, destinations
        syncer = Syncer(store, destinations(config), config)
        print(f"{store.outbox_counts()['pending']} result(s) to send to "
              + ", ".join(sink.describe() for sink in syncer.sinks))
        try:
            summary = syncer.sync_once(on_progress=progress)
        finally:
            syncer.close()
        counts = store.outbox_counts()
    print(f"{summary.sent} sent, {summary.failed} rejected by the lab, {counts['pending']} still pending; "
          f"{summary.alerts_sent} alert(s) delivered to the clinic")
    for seq, reason in summary.failures:
        print(f"  record #{seq}: {reason} (details: stripread sync --status)")
    if summary.waiting:
        print(("Stopped, the lab refused this reader: " if summary.refused else "Stopped, will retry later: ")
              + summary.waiting)
    return EXIT_OK if counts["pending"] == 0 and summary.failed == 0 else EXIT_REFUSED


def _background_sync(args, stack: contextlib.ExitStack, stop: threading.Event) -> threading.Event | None:
    """`stripread run` syncs in a thread of its own, with its own store connection; the returned
    event wakes it when a session stored a result."""
    from device.lab.config import find_config
    if find_config(args.lab_config) is None:
        return None          # a reader without a lab keeps its results; `stripread sync` later
    config = _lab_config(args)
    if config is None:
        raise SystemExit(EXIT_USAGE)
    from device.store.results import ResultStore
    from device.lab.sync import Syncer, destinations
    syncer = Syncer(stack.enter_context(ResultStore(args.db)), destinations(config), config)
    wake = threading.Event()
    thread = threading.Thread(target=syncer.run, args=(stop, wake), name="lab-sync", daemon=True)
    thread.start()
    stack.callback(syncer.close)
    stack.callback(thread.join)
    return wake


def cmd_demo(args) -> int:
    """A full timed reading session on the simulated reader: the simulated board (LEDs, strip
    sensor, climate) over a real serial link on a pseudo-terminal, the simulated camera whose pads
    develop after dipping, time compressed by --speed; the result printed and stored."""
    from device.runtime.session import ReadingSession
    from device.store.results import StoreUnavailable, open_for_service
    from device.cli.report import advice, session_line
    words = _words(args)
    setup = ReaderSetup.from_args(args, simulate=True)
    try:
        reader = setup.reader()
        store = open_for_service(args.db)        # a damaged store is set aside, never written
    except ReadError as err:
        print(format_table(_refusal(err.code, err.message), words))
        return EXIT_REFUSED
    except StoreUnavailable as exc:
        print(f"stripread: {exc}", file=sys.stderr)
        return EXIT_USAGE
    clock = setup.clock()
    with contextlib.ExitStack() as stack:
        stack.enter_context(store)
        board, _, rig = setup.hardware(stack, reader.product, clock)
        print(words("Simulated reader: a {product} strip, camera '{camera}' under '{light}' light, time x{speed}; "
                    "board firmware {firmware} on {port}.", product=reader.product.id, camera=rig.camera.spec.camera,
                    light=rig.camera.spec.illuminant, speed=f"{args.speed:g}",
                    firmware=".".join(map(str, board.info.firmware_version)), port=rig.port))
        session = ReadingSession(reader, board, rig.camera, store, clock, admit=setup.qc_gate(stack),
                                 judge=_alert_judge(args),
                                 on_progress=lambda message: print(f"  {session_line(message, words)}", flush=True))
        threading.Timer(2.0 / args.speed, rig.insert_strip).start()   # the patient, two seconds later
        report = session.run(patient_id="DEMO", operator_id="demo")
    result = report.record.result
    print()
    print(json.dumps(result, indent=1) if args.json else format_table(result, words))
    if result.get("status") == "ok":
        agree = sum(a["level"] == rig.camera.final_levels[a["analyte"]] for a in result["analytes"])
        print("\n" + words("{agree} of {pads} pads read at the level the simulator developed them to.", agree=agree,
                            pads=len(result["analytes"])))
        if not args.json:
            from device.monitoring.alerts import load_rules
            print("\n" + advice(report.record, load_rules(args.alert_rules), words))
    print(words("Stored as record #{seq} in {db}.", seq=report.record.seq, db=args.db))
    return EXIT_OK if result.get("status") == "ok" else EXIT_REFUSED


def _start_web(args, stack: contextlib.ExitStack, service, rig, lab: bool = False) -> None:
    """The local web interface in a thread of its own (uvicorn, no access log: paths hold patient ids)."""
    if args.web == "off":
        return
    import logging

    import uvicorn
    from calibration.specs import load_product
    from device.monitoring.alerts import load_rules
    from device.web.app import WebContext, create_app
    host, _, port = args.web.rpartition(":")
    https = bool(args.web_cert)
    app = create_app(WebContext(Path(args.db), load_product(args.product), service, rig, https=https,
                                login_everywhere=args.web_login, rules=load_rules(args.alert_rules), lab=lab,
                                contact=args.contact, locale=_words(args).locale, style=_words(args).style))
    config = uvicorn.Config(app, host=host or "127.0.0.1", port=int(port), access_log=False, log_level="warning",
                            ssl_certfile=args.web_cert, ssl_keyfile=args.web_key, log_config=None)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="web", daemon=True)
    thread.start()
    while not server.started and thread.is_alive():
        threading.Event().wait(0.05)
    if not server.started:
        raise SystemExit(f"the web interface could not listen on {args.web}")
    bound = server.servers[0].sockets[0].getsockname()
    logging.getLogger("stripread.web").info("web interface ready", extra={"fields": {
        "url": f"{'https' if https else 'http'}://{bound[0]}:{bound[1]}/"}})
    stack.callback(thread.join, 5)
    stack.callback(setattr, server, "should_exit", True)


def cmd_serve(args) -> int:
    """The reader with its web interface, where tests are started from the page (with --simulate,
    "start" also puts a simulated strip in the simulated reader)."""
    return cmd_run(args, automatic_patient=False)


def _alert_judge(args):
    """The alert rules the reader checks after each patient's reading (the shipped defaults, or a
    clinic's edited file)."""
    from device.monitoring.alerts import judge, load_rules
    return judge(load_rules(args.alert_rules))


def cmd_run(args, automatic_patient: bool = True) -> int:
    """The reader's service loop (systemd runs this): strips in, sessions run, results stored."""
    from device.runtime.service import ReaderService, bound_heap, install_json_logging, stop_on_signals
    from device.runtime.session import ReadingSession
    from device.store.results import StoreUnavailable, open_for_service
    bound_heap()
    install_json_logging()
    stop = threading.Event()
    stop_on_signals(stop)
    try:                 # before anything else opens the file: a damaged store is set aside, never written
        store = open_for_service(args.db)
    except StoreUnavailable as exc:
        import logging
        logging.getLogger("stripread.service").error(f"cannot start: {exc}")
        return EXIT_USAGE
    with contextlib.ExitStack() as stack:
        stack.enter_context(store)
        setup = ReaderSetup.from_args(args)
        reader = setup.reader(long_lived=True)
        clock = setup.clock()
        board, camera, rig = setup.hardware(stack, reader.product, clock)
        session = ReadingSession(reader, board, camera, store, clock, stop=stop, admit=setup.qc_gate(stack),
                                 judge=_alert_judge(args))
        if args.min_free_mb is not None:
            session.min_free_mb = args.min_free_mb
        wake_sync = _background_sync(args, stack, stop)
        service = ReaderService(session, operator_id=args.operator, on_stored=wake_sync.set if wake_sync else None)
        _start_web(args, stack, service, rig, lab=wake_sync is not None)
        if args.simulate and automatic_patient:
            rig.patient(session, stop, strips=args.strips)
        service.serve()
        stop.set()          # the reader is done (or --strips ran out): the sync thread ends its pass
    return EXIT_OK


def cmd_user(args) -> int:
    """Create a staff account (a technician, or `--role nurse`), or set a new password and role
    (ending its web sessions)."""
    import getpass
    from device.web.auth import Accounts
    if args.password_file:
        password = Path(args.password_file).read_text(encoding="utf-8").strip()
    else:
        password = getpass.getpass(f"New password for {args.name}: ")
        if getpass.getpass("Again: ") != password:
            print("the passwords differ", file=sys.stderr)
            return EXIT_USAGE
    try:
        with Accounts(args.db) as accounts:
            accounts.set_password(args.name, password, args.role)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    print(f"{args.role or 'staff member'} {args.name} can log in to the web interface")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """Every command with its options and the function that runs it, in the order `--help` lists them."""
    parser = argparse.ArgumentParser(prog="stripread", description="Quantitative urine test-strip reader.")
    sub = parser.add_subparsers(dest="command", required=True)
    _reading_parsers(sub)
    _service_parsers(sub)
    _store_parsers(sub)
    technician.add_parsers(sub)
    _lab_and_model_parsers(sub)
    return parser


def _reading_parsers(sub) -> None:
    """`read`, `card print` and `demo`."""
    read = sub.add_parser("read", help="read one photo of a strip on the reference card")
    read.add_argument("photo")
    read.add_argument("--json", action="store_true", help="print the stripread.read/1 result object")
    spec_options(read, model=True)
    db_option(read)
    display_options(read)
    read.set_defaults(func=cmd_read)

    card = sub.add_parser("card", help="the reference card")
    card_sub = card.add_subparsers(dest="card_command", required=True)
    card_print = card_sub.add_parser("print", help="write the printable card (PNG at --dpi and SVG at true size)")
    card_print.add_argument("--card", default="card-v1")
    card_print.add_argument("--out", default=".", help="output folder")
    card_print.add_argument("--dpi", type=int, default=600)
    card_print.set_defaults(func=cmd_card_print)

    demo = sub.add_parser("demo", help="a full timed reading session on the built-in simulated reader")
    demo.add_argument("--seed", type=int, default=1)
    demo.add_argument("--speed", type=float, default=20.0, help="time compression (default 20: a 2-minute "
                                                                  "read takes 6 s)")
    demo.add_argument("--json", action="store_true")
    alert_option(demo)
    spec_options(demo, model=True)
    db_option(demo)
    display_options(demo)
    demo.set_defaults(func=cmd_demo)


def _service_parsers(sub) -> None:
    """`run`, `serve` and `user` (the web interface's staff accounts)."""
    run = sub.add_parser("run", help="the reader service: wait for strips, run sessions, store results")
    run.add_argument("--strips", type=int, help="when simulating: stop the simulated patient after this many strips")
    service_options(run, "127.0.0.1:8080")
    run.set_defaults(func=cmd_run)

    serve = sub.add_parser("serve", help="the reader with its web interface; tests are started from the page")
    service_options(serve, "127.0.0.1:8080")
    serve.set_defaults(func=cmd_serve)

    user = sub.add_parser("user", help="staff accounts of the web interface (nurses and technicians)")
    user.add_argument("name")
    user.add_argument("--role", choices=("nurse", "technician"), help="a nurse sees the clinic's alerts and "
                      "patients' histories; a technician also QC and calibration (default: technician for a new "
                      "account, unchanged for an existing one)")
    user.add_argument("--password-file", help="read the password from this file (default: ask)")
    db_option(user)
    user.set_defaults(func=cmd_user)


def _store_parsers(sub) -> None:
    """`history`, `trend`, `export`, `verify` and `backup`: the result store."""
    history = sub.add_parser("history", help="past results, newest first")
    history.add_argument("--patient", help="only this patient's results")
    history.add_argument("--limit", type=int, default=20)
    db_option(history)
    history.set_defaults(func=cmd_history)

    trend = sub.add_parser("trend", help="a patient's results over time: a summary and a PNG plot")
    trend.add_argument("--patient", required=True)
    trend.add_argument("--out", help="PNG file to write (default trend.png)")
    trend.add_argument("--limit", type=int, default=500, help="newest tests to include")
    db_option(trend)
    display_options(trend)
    trend.set_defaults(func=cmd_trend)

    export = sub.add_parser("export", help="every stored result, as CSV (one row per pad) or JSON lines")
    export.add_argument("--format", choices=("csv", "json"), default="csv")
    export.add_argument("--out", help="file to write (default: standard output)")
    db_option(export)
    export.set_defaults(func=cmd_export)

    verify = sub.add_parser("verify", help="check the result store (file, hash chain, signatures, checkpoint): "
                                           "damage and tampering show")
    verify.add_argument("--public-key", help="check the signatures against this exported public key (PEM) rather "
                                             "than the device key beside the store")
    verify.add_argument("--export-key", action="store_true", help="print the device's public key (PEM; its id on "
                                                                  "stderr) for the lab or a technician to keep")
    db_option(verify)
    verify.set_defaults(func=cmd_verify)

    backup = sub.add_parser("backup", help="a consistent copy of the result store (while the service runs), "
                                           "with its checkpoint")
    backup.add_argument("dest", help="the new database file to write (must not exist)")
    db_option(backup)
    backup.set_defaults(func=cmd_backup)


def _lab_and_model_parsers(sub) -> None:
    """`sync` (the lab), `train` (the pad models) and `simulate` (a synthetic photo)."""
    sync = sub.add_parser("sync", help="send stored results to the lab (FHIR and/or HL7 v2 over MLLP)")
    sync.add_argument("--status", action="store_true", help="show pending, failed and sent counts and why "
                                                            "results failed; send nothing")
    sync.add_argument("--retry-failed", action="store_true", help="queue the results a lab rejected again")
    sync.add_argument("--lab-config", help="lab configuration (default $STRIPREAD_LAB_CONFIG, "
                                           "/etc/stripread/lab.toml, ~/.config/stripread/lab.toml)")
    db_option(sync)
    sync.set_defaults(func=cmd_sync)

    tr = sub.add_parser("train", help="train a product's pad models and export them to ONNX")
    tr.add_argument("--synthetic", type=int, default=0, metavar="N", help="render N synthetic scenes to train on")
    tr.add_argument("--data", help="folder of real labelled captures (photos + labels.csv, see models/dataset.py)")
    tr.add_argument("--out", help="model file to write (default <product>.onnx)")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--jobs", type=int, default=2, help="processes rendering synthetic scenes")
    tr.add_argument("--photos", metavar="DIR", help="keep the rendered photos here and reuse them (a change to "
                                                    "the reader is then trained on the same photos, not rendered again)")
    spec_options(tr)
    tr.set_defaults(func=cmd_train)

    sim = sub.add_parser("simulate", help="render a synthetic photo of a strip on the card (for trying the reader)")
    sim.add_argument("--out", required=True)
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--fault", default=None, help="no_card, no_strip, reversed, pads_down, wrong_strip, glare, "
                                                   "too_dark, overexposed, blurred, out_of_gamut")
    spec_options(sim)
    sim.set_defaults(func=cmd_simulate)


def _database_errors() -> tuple:
    """sqlite3's error, once a command loaded sqlite3 (nothing raised one before): a cold `read`
    without a store never imports it (1.3 MB)."""
    sqlite3 = sys.modules.get("sqlite3")
    return (sqlite3.DatabaseError,) if sqlite3 else ()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (SpecError, LanguageError) as exc:
        print(f"stripread: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except _database_errors() as exc:    # the file, not the code: say which and what to do
        print(f"stripread: the results database {getattr(args, 'db', '')} cannot be used: {exc}. "
              "`stripread verify` says more; the service sets a damaged store aside and starts a fresh one.",
              file=sys.stderr)
        return EXIT_REFUSED
    except BrokenPipeError:   # output piped into `head` and the like: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception as exc:  # an unexpected failure is reported, never a half-printed result
        if getattr(args, "json", False):
            print(json.dumps(_refusal("internal", "The reader failed unexpectedly; please report it and "
                                                  "read again.")))
        print(f"stripread: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
