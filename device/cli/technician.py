"""The technicians' commands: `stripread calibrate camera|card|lot|list` and `stripread qc
run|status|schedule|report`. Each stores an immutable record (device.store.records) whose id every
later result's provenance names; QC records also decide whether patients may test (calibration.in_force).

The work itself lives in `calibration/` (camera_calibration, card_measurement, lot, qc); this
module prompts, shows progress and summaries, and stores the outcome.
"""
from __future__ import annotations

import contextlib
import sys
from datetime import date
from pathlib import Path

from device.cli.options import db_option, hardware_options, spec_options
from device.cli.terminal import EXIT_OK, EXIT_REFUSED, EXIT_USAGE, progress, prompt
from device.runtime.wiring import ReaderSetup


def calibrate_camera(args) -> int:
    """Photos of the blank card under the reader's LEDs -> flat field, linearity check and the
    camera's locked settings."""
    from calibration.camera_calibration import CameraCalibrationError, measure
    from device.store.records import Records
    from calibration.specs import load_card, load_product
    from device.reading.reader import device_id
    card = load_card(args.card)
    setup = ReaderSetup.from_args(args)
    with contextlib.ExitStack() as stack:
        board, camera, _ = setup.hardware(stack, load_product(args.product), setup.clock())
        prompt(args, "Put the blank reference card in the tray with no strip in the slot and close the lid")
        board.set_leds(255, 255, 255)
        try:
            settings = camera.start()
            photos = []
            for n in range(args.photos):
                photos.append(camera.capture())
                progress(n + 1, args.photos)
        finally:
            board.leds_off()
            camera.stop()
    try:
        calibration = measure(photos, card, settings)
    except CameraCalibrationError as exc:
        print(f"camera calibration refused: {exc}")
        return EXIT_REFUSED
    with Records(args.db) as records:
        record = records.add("camera", device_id(), calibration.to_dict(), operator=args.operator)
    print(calibration.summary())
    print(f"Stored as {record.id}; every reading from now on applies it and names it in its provenance.")
    return EXIT_OK


def calibrate_card(args) -> int:
    """A spectrophotometer's measurement of this reader's printed card -> the card it reads with."""
    from calibration.card_measurement import MeasurementError, import_measurements
    from device.store.records import Records
    from calibration.specs import load_card, load_product
    nominal = load_card(args.card)
    _, calibration = ReaderSetup.from_args(args).calibration(nominal, load_product())
    try:
        text = Path(args.measurements).read_text(encoding="utf-8-sig")
        photos = [Path(p).read_bytes() for p in args.photo]
    except OSError as exc:
        print(f"cannot read {exc.filename}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    try:
        measured = import_measurements(nominal, text, photos, calibration.flat_field)
    except MeasurementError as exc:
        print(f"card measurement refused: {exc}")
        return EXIT_REFUSED
    if args.out:
        measured.write(args.out)
    with Records(args.db) as records:
        record = records.add("card", nominal.id, {"card": measured.card_json}, operator=args.operator)
    print(measured.report())
    print(f"Stored as {record.id}: readings with card {nominal.id} now use the measured references "
          f"(card {measured.card.id}).")
    return EXIT_OK


def calibrate_lot(args) -> int:
    """Strips of a new lot dipped in calibrators -> the lot's correction, with the agreement it buys."""
    from calibration import lot as lots
    from calibration.observe import StripObserver
    from device.store.records import Records
    from calibration.specs import load_card, load_product
    from models.onnx_model import OnnxPadModel
    product = load_product(args.product)
    card, calibration = ReaderSetup.from_args(args).calibration(load_card(args.card), product)
    try:
        expires = date.fromisoformat(args.expires)
        calibrators = lots.load_calibrators(args.calibrators, product)
        observer = StripObserver(card, product, flat_field=calibration.flat_field)
        print(f"Reading {len(calibrators)} calibrator photos of lot {args.lot}")
        observations, expected = lots.observe_calibrators(observer, calibrators)
        fitted = lots.fit_lot(product, args.lot, expires, observations, expected)
    except ValueError as exc:
        print(f"lot calibration refused: {exc}")
        return EXIT_REFUSED
    print(lots.format_agreement(lots.agreement(OnnxPadModel(product), product, observations, expected)))
    with Records(args.db) as records:
        record = records.add("lot", args.lot, fitted.to_dict(), operator=args.operator)
    print(f"Stored as {record.id}; readings with --lot {args.lot} apply it until {expires.isoformat()}, "
          "and are refused after that.")
    return EXIT_OK


def calibration_list(args) -> int:
    """The records in force on this reader."""
    from device.store.records import Records
    from calibration.in_force import qc_status
    with Records(args.db) as records:
        rows = [(kind.replace("_", " "), record) for kind in ("camera", "card", "lot", "qc_schedule")
                for record in records.latest_per_subject(kind).values()]
        status = qc_status(records)
        tampered = records.verify()
    if not rows:
        print("no calibration records: the reader runs on its factory calibration")
    for kind, record in rows:
        print(f"{kind:12} {record.subject:16} {record.id:22} {record.created_at[:16].replace('T', ' ')}"
              f"  {record.operator or '-'}")
    print(status.message)
    if tampered:
        print(f"records altered after they were made: {', '.join(tampered)}")
        return EXIT_REFUSED
    return EXIT_OK


def qc_run(args) -> int:
    """Read the control strips (photos, or timed sessions on the reader) and judge the run."""
    from calibration.in_force import find_control, judge_qc_run
    from device.store.records import Records
    controls = [find_control(name) for name in args.control]
    if args.photo and len(args.photo) != len(controls):
        print("give one --photo per --control, in the same order", file=sys.stderr)
        return EXIT_USAGE
    results = _read_photos(args) if args.photo else _read_controls_on_the_reader(args, [c for c, _ in controls])
    with Records(args.db) as records:
        runs, status = judge_qc_run(records, controls, results, args.operator)
    for (control, _), run in zip(controls, runs):
        print(f"{control.id} ({control.material_lot}): {'PASS' if run.passed else 'FAIL'} - {run.summary}")
    print(status.message)
    return EXIT_OK if all(run.passed for run in runs) else EXIT_REFUSED


def _read_photos(args) -> list[dict]:
    reader = ReaderSetup.from_args(args).reader()
    return [reader.read(Path(photo).read_bytes()) for photo in args.photo]


def _read_controls_on_the_reader(args, controls) -> list[dict]:
    """One timed session per control strip, exactly as a patient's strip is read."""
    from calibration.in_force import qc_guidance
    from device.runtime.session import ReadingSession
    from device.store.results import ResultStore
    setup = ReaderSetup.from_args(args)
    reader = setup.reader()
    clock = setup.clock()
    results = []
    with contextlib.ExitStack() as stack:
        board, camera, rig = setup.hardware(stack, reader.product, clock)
        store = stack.enter_context(ResultStore(args.db))
        session = ReadingSession(reader, board, camera, store, clock,
                                 on_progress=lambda message: print(f"  {message}", flush=True))
        for control in controls:
            print(qc_guidance(control))
            if rig is not None:            # the simulated technician dips it
                rig.hand_in_new_strip(levels={a.analyte: a.target for a in control.analytes})
            report = session.run(operator_id=args.operator, purpose="qc")
            results.append(report.record.result)
            if rig is not None:
                rig.remove_strip()
            _wait_for_empty_tray(board, clock)
    return results


def _wait_for_empty_tray(board, clock, timeout_s: float = 120.0) -> None:
    """Before the next control strip: the last one out, and its removal not mistaken for the next's."""
    deadline = clock.now() + timeout_s
    while board.strip_present() and clock.now() < deadline:
        clock.sleep(0.5)
    while not board.events.empty():
        board.events.get_nowait()


def qc_status_command(args) -> int:
    from device.store.records import Records
    from calibration.in_force import qc_status
    with Records(args.db) as records:
        status = qc_status(records)
        latest = records.latest_per_subject("qc")
    for control, run in sorted(latest.items()):
        print(f"{control:20} {run.created_at[:16].replace('T', ' ')}  {'pass' if run.payload['passed'] else 'FAIL'}"
              f"  {run.payload['run']['summary']}")
    print(status.message)
    return EXIT_REFUSED if status.locked else EXIT_OK


def qc_schedule(args) -> int:
    """Which controls must pass how often; overdue ones lock patient tests."""
    from calibration.in_force import find_control
    from device.store.records import Records
    control_ids = [find_control(name)[0].id for name in args.control]
    with Records(args.db) as records:
        record = records.add("qc_schedule", "reader", {"interval_hours": args.every_hours, "controls": control_ids},
                             operator=args.operator)
    print(f"QC of {', '.join(control_ids)} due every {args.every_hours:g} h (record {record.id})")
    return EXIT_OK


def qc_report(args) -> int:
    """A Levey-Jennings chart per control (PNG), from every stored run of its current lot."""
    from calibration.qc import levey_jennings_png
    from device.language.i18n import Words
    from device.store.records import Records
    from calibration.in_force import control_runs
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with Records(args.db) as records:
        charts = [control_runs(records, control_id) for control_id in sorted(records.latest_per_subject("qc"))]
    if not charts:
        print("no QC runs stored yet")
        return EXIT_OK
    for control, series in charts:
        path = levey_jennings_png(control, series, out / f"levey-jennings-{control.id}.png", Words())
        print(f"{control.id}: {len(series)} runs -> {path}")
    return EXIT_OK


def add_parsers(sub) -> None:
    """`calibrate ...` and `qc ...` on the main parser."""
    calibrate = sub.add_parser("calibrate", help="technicians: calibrate the camera, the card, a strip lot")
    _calibrate_parsers(calibrate.add_subparsers(dest="calibrate_command", required=True))
    qc = sub.add_parser("qc", help="technicians: quality control with control strips; a failure locks patient tests")
    _qc_parsers(qc.add_subparsers(dest="qc_command", required=True))


def _technician_options(p, needs_hardware: bool = False) -> None:
    p.add_argument("--operator", help="the technician's id, kept with the record")
    db_option(p)
    if needs_hardware:
        hardware_options(p)
        p.add_argument("--yes", action="store_true", help="do not wait for Enter")


def _calibrate_parsers(calibrate_sub) -> None:
    camera = calibrate_sub.add_parser("camera", help="flat field, linearity and locked exposure from photos of "
                                                     "the blank card under the reader's LEDs")
    camera.add_argument("--photos", type=int, default=5)
    _technician_options(camera, needs_hardware=True)
    spec_options(camera)
    camera.set_defaults(func=calibrate_camera)

    card = calibrate_sub.add_parser("card", help="load a spectrophotometer's CIELAB measurement of the printed card")
    card.add_argument("--measurements", required=True, help="CSV: patch,L,a,b (D50, 2 degrees); see "
                                                            "calibration/card_measurement.py")
    card.add_argument("--photo", action="append", default=[], help="a photo of the card on this reader, to check "
                                                                   "the measurement against (repeatable)")
    card.add_argument("--card", default="card-v1", help="the card as designed (default card-v1)")
    card.add_argument("--out", help="also write the measured card file here")
    _technician_options(card)
    card.set_defaults(func=calibrate_card)

    lot = calibrate_sub.add_parser("lot", help="fit a strip lot's correction from strips dipped in calibrators")
    lot.add_argument("--lot", required=True, help="the lot number on the bottle")
    lot.add_argument("--expires", required=True, help="the bottle's expiry date, YYYY-MM-DD")
    lot.add_argument("--calibrators", required=True, help="CSV: photo,analyte,level[,concentration]; see "
                                                          "calibration/lot.py")
    _technician_options(lot)
    spec_options(lot)
    lot.set_defaults(func=calibrate_lot)

    listing = calibrate_sub.add_parser("list", help="the calibration records in force and the QC state")
    db_option(listing)
    listing.set_defaults(func=calibration_list)


def _qc_parsers(qc_sub) -> None:
    run = qc_sub.add_parser("run", help="read control strips and judge them (ranges, Westgard rules)")
    run.add_argument("--control", action="append", required=True,
                     help="negative, positive or a control file (repeatable: one strip each)")
    run.add_argument("--photo", action="append", default=[], help="photos of the control strips instead of "
                                                                  "reading them on the reader")
    _technician_options(run, needs_hardware=True)
    spec_options(run, model=True)
    run.set_defaults(func=qc_run)

    status = qc_sub.add_parser("status", help="whether patient tests are allowed, and each control's last run")
    db_option(status)
    status.set_defaults(func=qc_status_command)

    schedule = qc_sub.add_parser("schedule", help="require controls to pass every N hours")
    schedule.add_argument("--every-hours", type=float, required=True)
    schedule.add_argument("--control", action="append", required=True)
    _technician_options(schedule)
    schedule.set_defaults(func=qc_schedule)

    report = qc_sub.add_parser("report", help="Levey-Jennings charts (PNG) of every control")
    report.add_argument("--out", default=".", help="folder for the charts")
    db_option(report)
    report.set_defaults(func=qc_report)
