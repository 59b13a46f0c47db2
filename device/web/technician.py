"""The technician's pages: running quality control from the page (a control strip read on the
reader as a patient's is, then judged and stored once), its Levey-Jennings charts (inline SVG,
and the printable PNG), the calibration records, the lab sync (and retrying what failed), and the
device's health. Its JSON (/api/tech/status) sits beside the page."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Query
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from calibration import qc            # as a module: tests count the PNGs drawn through qc.levey_jennings_png
from calibration.in_force import control_runs, find_control, judge_qc_run, qc_guidance
from device.language.i18n import N_, Words
from device.reading.reader import device_id, software_version
from device.runtime.session import climate_range
from device.store.records import Records
from device.store.results import ResultStore
from device.web.pages import NOT_LOGGED_IN, Name, PageOf, Seq, SiteOf, Staff, Technician, TechnicianForm, WordsOf
from device.language.plain import levey_jennings_svg, plain_name
from device.web.records import local, stored
from device.web.site import Site

CONTROLS = ("negative", "positive")             # the control materials shipped with the reader
Control = Annotated[str, Query(pattern="^(negative|positive)$")]

router = APIRouter()


def control_guidance() -> list[dict]:
    """What to do with each shipped control's strip."""
    return [{"name": name, "title": definition.name, "guidance": qc_guidance(definition)}
            for name, (definition, _) in ((name, find_control(name)) for name in CONTROLS)]


def _lj_panels(control_id: str, control, series, words: Words) -> list[dict]:
    """A Levey-Jennings plot per pad of the control that has runs with a z-score."""
    panels = []
    for analyte in (a.pad.analyte for a in control.analytes):
        runs = [(run.at.isoformat(), found.z, "failed" if found.rules or not found.in_range else
                 "warning" if found.warnings else "ok")
                for run in series if (found := run.analyte(analyte)) is not None and found.z is not None]
        if runs:
            label = f"lj-{control_id}-{analyte}"
            panels.append({"id": label, "name": plain_name(analyte, words),
                           "svg": levey_jennings_svg(runs, label, words)})
    return panels


def qc_charts(db: Path, words: Words) -> list[dict]:
    """Each control's runs of its current lot: a Levey-Jennings plot per pad and the runs as a table."""
    charts = []
    with Records(db) as records:
        for control_id in sorted(records.latest_per_subject("qc")):
            control, series = control_runs(records, control_id)
            charts.append({"id": control_id, "name": control.name, "lot": control.material_lot,
                           "panels": _lj_panels(control_id, control, series, words),
                           "runs": [{"at": local(run.at.isoformat(), words), "passed": run.passed,
                                     "summary": run.summary}
                                    for run in reversed(series)][:20]})
    return charts


def device_health(service) -> dict:
    """Each reading of the device with its judgement where it has a range (the strips' climate)."""
    health = {"device_id": device_id(), "software": software_version()}
    if service is None:
        return {**health, "reader": "not running", "checks": []}
    board, session = service.session.board, service.session
    health.update(camera=session.camera.name, state=session.state.value, checks=[])
    try:
        climate = board.climate()
        health.update(firmware=".".join(map(str, board.info.firmware_version)),
                      temperature_c=round(climate.temperature_c, 1), humidity_pct=round(climate.humidity_pct, 1))
    except Exception as exc:     # the board may be unplugged: show that instead of failing the page
        health["board"] = f"not answering ({type(exc).__name__})"
        return health
    limits = climate_range(session.product)
    for label, key, unit in ((N_("Temperature"), "temperature_c", "°C"), (N_("Humidity"), "humidity_pct", "%")):
        low, high = limits[key]
        value = health[key]
        health["checks"].append({"label": label, "value": f"{value:g} {unit}", "ok": low <= value <= high,
                                 "range": f"{low:g} to {high:g} {unit}"})
    return health


def technician_status(site: Site) -> dict:
    """The latest QC run of each control, recent calibration records, the lab sync, the device's health."""
    with Records(site.context.db) as records:
        latest_qc = {control: {"id": run.id, "at": run.created_at, "passed": run.payload["passed"],
                               "summary": run.payload["run"]["summary"]}
                     for control, run in records.latest_per_subject("qc").items()}
        calibrations = [{"kind": r.kind, "subject": r.subject, "id": r.id, "at": r.created_at, "operator": r.operator}
                        for kind in ("camera", "card", "lot", "qc_schedule") for r in records.history(kind, limit=5)]
    with ResultStore(site.context.db) as store:
        sync = {"counts": store.outbox_counts(),
                "failed": [{"seq": seq, "attempts": attempts, "error": error}
                           for seq, _, attempts, error in store.failures()]}
    gate = site.qc_state()
    return {"qc": {"locked": gate["locked"], "message": gate["message"], "tone": gate["tone"], "controls": latest_qc},
            "calibrations": calibrations, "sync": sync, "device": device_health(site.context.service)}


@router.get("/tech", response_class=HTMLResponse, include_in_schema=False)
def technician_page(session: Technician, page: PageOf):
    site = page.site
    return page("tech.html", csrf=session.csrf, status=technician_status(site), controls=control_guidance(),
                charts=qc_charts(site.context.db, page.words), live=site.context.service is not None,
                busy=site.in_progress())


@router.get("/api/tech/status", responses=NOT_LOGGED_IN)
def technician_json(site: SiteOf, session: Staff) -> dict:
    """Calibration records, QC, lab sync and device health (technicians only)."""
    if session is None or not session.may("technician"):
        raise HTTPException(401, N_("log in as a technician"))
    return technician_status(site)


@router.post("/tech/qc/run", include_in_schema=False)
def run_qc(site: SiteOf, session: TechnicianForm, control: Annotated[str, Form(pattern="^(negative|positive)$")]):
    """A control strip read on the reader as a patient's is (the CLI's `qc run`), then judged."""
    if site.context.service is None:
        raise HTTPException(409, N_("No reader is running here: run `stripread qc run` on the reader instead."))
    if site.in_progress():
        raise HTTPException(409, N_("A test is in progress: wait for it to finish, then run QC."))
    definition, _ = find_control(control)
    site.begin(None, session.username, "qc", levels={a.analyte: a.target for a in definition.analytes})
    return RedirectResponse(f"/test/live?after={site.started_after}&control={control}", status_code=303)


@router.get("/tech/qc/result/{seq}", response_class=HTMLResponse, include_in_schema=False)
def qc_result(session: Technician, page: PageOf, seq: Seq, control: Control):
    """The control strip's verdict, judged and stored once (the record of this strip's photo)."""
    site = page.site
    record = stored(site.context.db, seq)
    if not record["qc"]:
        raise HTTPException(404, f"record #{seq} is not a control strip")
    if record["result"].get("status") == "aborted":       # no strip was read: nothing to judge or store
        raise HTTPException(409, f"The control strip was not read: {record['result'].get('message')} "
                                 "Run QC again from the technician page.")
    definition, text = find_control(control)
    image = record["result"]["provenance"]["image_sha256"]
    with Records(site.context.db) as records:
        done = next((r for r in records.history("qc", definition.id, limit=20)
                     if r.payload.get("image_sha256") == image), None)
        if done is None:
            runs, _ = judge_qc_run(records, [(definition, text)], [record["result"]], session.username)
            run = runs[0].to_dict()
        else:
            run = done.payload["run"]
    return page("qc_result.html", control=definition, run=run, seq=seq, qc=site.qc_state())


@router.get("/tech/qc/{control_id}.png", include_in_schema=False)
def levey_jennings(session: Technician, site: SiteOf, words: WordsOf, control_id: Name):
    """The chart, drawn once per new run of the control (drawing takes about a second)."""
    with Records(site.context.db) as records:
        newest = records.latest("qc", control_id)
        if newest is None:
            raise HTTPException(404, N_("no runs of this control"))
        key = (control_id, newest.id, words.locale)
        with site.chart_lock:
            png = site.context.charts.get(key)
        if png is None:
            control, series = control_runs(records, control_id)
            buffer = io.BytesIO()
            qc.levey_jennings_png(control, series, buffer, words)
            png = buffer.getvalue()
            with site.chart_lock:
                site.context.charts = {k: v for k, v in site.context.charts.items()   # this control's older runs go
                                       if k[0] != control_id or k[1] == newest.id}
                site.context.charts[key] = png
    return Response(png, media_type="image/png")


@router.post("/tech/sync/retry", include_in_schema=False)
def retry_sync(site: SiteOf, session: TechnicianForm):
    with ResultStore(site.context.db) as store:
        store.retry_failed()
    return RedirectResponse("/tech", status_code=303)
