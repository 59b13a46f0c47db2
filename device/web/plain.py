"""What a result means, in words a patient can act on, and trend plots a person would rather look at
than a table: inline SVG drawn on the server (no script, no external files, readable offline)."""
from __future__ import annotations

from html import escape

NEXT_STEPS = {
    "GLU": "Sugar in the urine. If you have diabetes, check your blood glucose now and follow your plan; "
           "otherwise tell your doctor.",
    "PRO": "Protein in the urine. Repeat the test with the next morning's urine; if it shows again, "
           "tell your doctor or kidney nurse.",
    "KET": "Ketones in the urine. If you have diabetes and your blood glucose is high, contact your care "
           "team today.",
    "BLD": "Blood in the urine. Repeat the test in a few days (not during a period); if it shows again, "
           "tell your doctor.",
    "NIT": "Possible urinary infection (nitrite). Contact your doctor, especially with pain or fever.",
    "LEU": "White blood cells in the urine, a sign of infection or inflammation. Tell your doctor if you "
           "have symptoms.",
    "BIL": "Bilirubin in the urine. Tell your doctor; it can point to the liver.",
    "URO": "Raised urobilinogen. Tell your doctor at your next visit.",
    "PH": "Urine acidity outside the usual range; diet can cause this. Mention it at your next visit.",
    "SG": "Unusually concentrated or dilute urine; drinking more or less can cause this. Repeat the test "
          "another day.",
    "ALB": "Albumin in the urine, an early sign of kidney strain. Tell your doctor or kidney nurse.",
    "CRE": "Unusual creatinine: it is used to correct the albumin result; repeat the test another day.",
}
NOT_READ = {
    "outside_read_window": "This pad was read too late to be trusted; repeat the test with a new strip.",
    "out_of_gamut": "This pad's colour is not on the chart (a damaged or wrong strip?); repeat the test.",
}


def next_steps(result: dict) -> list[str]:
    """One sentence per abnormal or unread pad; an all-clear sentence otherwise."""
    steps = []
    for entry in result.get("analytes", []):
        if entry.get("level") is None:
            reason = next((NOT_READ[f] for f in entry.get("flags", []) if f in NOT_READ), None)
            steps.append(f"{entry['analyte']}: {reason or 'not read; repeat the test.'}")
        elif "abnormal" in entry.get("flags", []):
            steps.append(f"{entry['analyte']}: {NEXT_STEPS.get(entry['analyte'], 'Tell your doctor.')}")
    return steps or ["Every pad is within the usual range. Keep testing as your care team advised."]


def trend_svg(analyte: str, levels: list[str], points: list[tuple[str, float, float, bool]],
              width: int = 640, height: int = 220) -> str:
    """One analyte over time: chart levels as horizontal bands (labelled), each reading a dot at its
    chart position (its fractional place between levels), drawn larger the more confident the
    reading, red when abnormal; points: (date label, position, confidence, abnormal)."""
    left, right, top, bottom = 70, 16, 16, 36
    inner_w, inner_h = width - left - right, height - top - bottom
    steps = max(len(levels) - 1, 1)

    def y(position: float) -> float:
        return top + inner_h - position / steps * inner_h

    parts = [f'<svg class="trend" role="img" viewBox="0 0 {width} {height}" width="100%" '
             f'aria-label="{escape(analyte)} over time, {len(points)} readings">']
    for i, level in enumerate(levels):
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y(i):.1f}" y2="{y(i):.1f}" class="grid"/>')
        parts.append(f'<text x="{left - 8}" y="{y(i) + 5:.1f}" text-anchor="end" class="axis">{escape(level)}</text>')
    n = len(points)
    xs = [left + (inner_w * k / (n - 1) if n > 1 else inner_w / 2) for k in range(n)]
    if n > 1:
        path = " ".join(f"{'M' if k == 0 else 'L'}{x:.1f},{y(p[1]):.1f}" for k, (x, p) in enumerate(zip(xs, points)))
        parts.append(f'<path d="{path}" class="line"/>')
    for x, (label, position, confidence, abnormal) in zip(xs, points):
        radius = 4 + 5 * max(0.0, min(1.0, confidence))
        parts.append(f'<circle cx="{x:.1f}" cy="{y(position):.1f}" r="{radius:.1f}" '
                     f'class="{"abnormal" if abnormal else "normal"}"><title>{escape(label)}: '
                     f'{escape(levels[min(int(round(position)), len(levels) - 1)])} '
                     f'(confidence {confidence:.2f})</title></circle>')
    if n == 1:
        parts.append(f'<text x="{xs[0]:.1f}" y="{height - 10}" text-anchor="middle" class="axis">'
                     f'{escape(points[0][0])}</text>')
    elif n > 1:
        parts.append(f'<text x="{xs[0]:.1f}" y="{height - 10}" class="axis">{escape(points[0][0])}</text>')
        parts.append(f'<text x="{xs[-1]:.1f}" y="{height - 10}" text-anchor="end" class="axis">'
                     f'{escape(points[-1][0])}</text>')
    parts.append("</svg>")
    return "".join(parts)
