//! `GET /outcomes`: the dashboard a pathway lead reads. One server-rendered
//! HTML page, no script, no external resources: headline figures, SVG
//! charts (referrals per month, contacts before and after the MDT
//! assessment, care-home compliance) and the worklist of care-home residents
//! overdue for an assessment or review.

use super::measure::{Overdue, Report};
use std::fmt::Write;

/// Text for HTML: `& < > " '` escaped.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn gbp(amount: f64) -> String {
    let pounds = amount.round() as i64;
    let digits = pounds.unsigned_abs().to_string();
    let mut grouped = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(c);
    }
    format!("{}£{grouped}", if pounds < 0 { "−" } else { "" })
}

/// A bar chart of monthly referrals, two series side by side.
fn months_chart(months: &[(String, usize, usize)]) -> String {
    let (width, height, left, bottom) = (720.0, 220.0, 36.0, 28.0);
    let most = months
        .iter()
        .map(|(_, a, b)| (*a).max(*b))
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let slot = (width - left) / months.len().max(1) as f64;
    let bar = (slot - 8.0) / 2.0;
    let scale = (height - bottom - 10.0) / most;
    let mut svg = format!(
        r#"<svg role="img" aria-label="Referrals per month" viewBox="0 0 {width} {height}" width="{width}" height="{height}">"#
    );
    let _ = write!(
        svg,
        r##"<line x1="{left}" y1="{y}" x2="{width}" y2="{y}" stroke="#888"/>"##,
        y = height - bottom
    );
    for (i, (month, proactive, at_home)) in months.iter().enumerate() {
        let x = left + i as f64 * slot + 4.0;
        for (k, (count, colour, series)) in [
            (*proactive, "#005eb8", "proactive care"),
            (*at_home, "#ed8b00", "Bromley @Home"),
        ]
        .into_iter()
        .enumerate()
        {
            let h = count as f64 * scale;
            let _ = write!(
                svg,
                r#"<rect x="{:.1}" y="{:.1}" width="{bar:.1}" height="{h:.1}" fill="{colour}"><title>{month}: {count} {series}</title></rect>"#,
                x + k as f64 * bar,
                height - bottom - h
            );
        }
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" font-size="10" text-anchor="middle">{}</text>"#,
            x + bar,
            height - bottom + 14.0,
            esc(&month[2..])
        );
    }
    let _ = write!(
        svg,
        r#"<text x="4" y="14" font-size="11">{most}</text><text x="4" y="{:.1}" font-size="11">0</text></svg>"#,
        height - bottom
    );
    svg
}

/// Before/after bars for ED contacts and non-elective admissions.
fn before_after_chart(report: &Report) -> String {
    let pc = &report.proactive_care;
    let groups = [
        ("ED contacts", pc.ed_contacts.before, pc.ed_contacts.after),
        (
            "Non-elective admissions",
            pc.non_elective_admissions.before,
            pc.non_elective_admissions.after,
        ),
    ];
    let most = groups
        .iter()
        .map(|(_, b, a)| (*b).max(*a))
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let (width, row) = (720.0, 34.0);
    let label = 190.0;
    let scale = (width - label - 60.0) / most;
    let mut svg = format!(
        r#"<svg role="img" aria-label="Contacts before and after the MDT assessment" viewBox="0 0 {width} 160" width="{width}" height="160">"#
    );
    let mut y = 8.0;
    for (name, before, after) in groups {
        for (which, count, colour) in [("before", before, "#768692"), ("after", after, "#007f3b")] {
            let w = count as f64 * scale;
            let _ = write!(
                svg,
                r#"<text x="0" y="{:.1}" font-size="12">{name}, {which}</text><rect x="{label}" y="{y:.1}" width="{w:.1}" height="24" fill="{colour}"/><text x="{:.1}" y="{:.1}" font-size="12">{count}</text>"#,
                y + 16.0,
                label + w + 6.0,
                y + 16.0
            );
            y += row;
        }
        y += 6.0;
    }
    svg.push_str("</svg>");
    svg
}

/// Horizontal percentage bars.
fn percent_bars(rows: &[(&str, f64)]) -> String {
    let (width, label) = (720.0, 330.0);
    let mut svg = format!(
        r#"<svg role="img" aria-label="Percentages" viewBox="0 0 {width} {h}" width="{width}" height="{h}">"#,
        h = rows.len() * 32 + 8
    );
    for (i, (name, pct)) in rows.iter().enumerate() {
        let y = 4.0 + i as f64 * 32.0;
        let w = (width - label - 60.0) * pct.clamp(0.0, 100.0) / 100.0;
        let _ = write!(
            svg,
            r##"<text x="0" y="{:.1}" font-size="12">{}</text><rect x="{label}" y="{y:.1}" width="{:.1}" height="22" fill="#e8edee"/><rect x="{label}" y="{y:.1}" width="{w:.1}" height="22" fill="#005eb8"/><text x="{:.1}" y="{:.1}" font-size="12">{pct:.1}%</text>"##,
            y + 15.0,
            esc(name),
            width - label - 60.0,
            width - 52.0,
            y + 15.0
        );
    }
    svg.push_str("</svg>");
    svg
}

pub fn render(report: &Report, months: &[(String, usize, usize)], overdue: &[Overdue]) -> String {
    let pc = &report.proactive_care;
    let saved = pc.ed_contacts.cost_saved_gbp + pc.non_elective_admissions.cost_saved_gbp;
    let homes = &report.care_homes;
    let at_home = &report.bromley_at_home;
    let mut html = String::with_capacity(16 * 1024);
    let _ = write!(
        html,
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>One Bromley pathway outcomes, {as_of}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font-family: Arial, Helvetica, sans-serif; margin: 24px; color: #212b32; max-width: 1000px; }}
h1 {{ font-size: 26px; margin-bottom: 4px; }} h2 {{ font-size: 20px; margin-top: 32px; }}
.sub {{ color: #4c6272; }}
.tiles {{ display: flex; flex-wrap: wrap; gap: 12px; }}
.tile {{ border: 1px solid #d8dde0; border-top: 4px solid #005eb8; padding: 10px 14px; min-width: 200px; }}
.tile .n {{ font-size: 28px; font-weight: bold; }} .tile .l {{ color: #4c6272; font-size: 13px; }}
table {{ border-collapse: collapse; width: 100%; font-size: 14px; }}
th, td {{ text-align: left; border-bottom: 1px solid #d8dde0; padding: 6px 8px; vertical-align: top; }}
.legend span {{ display: inline-block; width: 12px; height: 12px; margin: 0 4px 0 12px; }}
</style></head><body>
<h1>Pathway outcomes</h1>
<p class="sub">As of {as_of}{period}. Windows: {weeks} weeks before and after the MDT assessment. Patients with a national data opt-out ({opted}) are in no figure.</p>
<div class="tiles">
<div class="tile" id="cohort"><div class="n">{cohort}</div><div class="l">patients {weeks}+ weeks past their MDT assessment</div></div>
<div class="tile" id="ed"><div class="n">{ed_pct:.1}%</div><div class="l">fewer ED contacts ({ed_before} → {ed_after})</div></div>
<div class="tile" id="nel"><div class="n">{nel_pct:.1}%</div><div class="l">fewer non-elective admissions ({nel_before} → {nel_after})</div></div>
<div class="tile" id="saved"><div class="n">{saved}</div><div class="l">saved at £{ed_cost:.2} per ED contact, £{nel_cost:.2} per admission</div></div>
<div class="tile" id="referrals"><div class="n">{referrals}</div><div class="l">proactive-care referrals in the period</div></div>
</div>
"#,
        as_of = esc(&report.as_of),
        period = match &report.from {
            Some(from) => format!(", referrals from {} to {}", esc(from), esc(&report.to)),
            None => format!(", referrals up to {}", esc(&report.to)),
        },
        weeks = report.window_weeks,
        opted = report.opted_out_excluded,
        cohort = pc.cohort,
        ed_pct = pc.ed_contacts.reduction_pct,
        ed_before = pc.ed_contacts.before,
        ed_after = pc.ed_contacts.after,
        nel_pct = pc.non_elective_admissions.reduction_pct,
        nel_before = pc.non_elective_admissions.before,
        nel_after = pc.non_elective_admissions.after,
        saved = gbp(saved),
        ed_cost = pc.ed_contacts.unit_cost_gbp,
        nel_cost = pc.non_elective_admissions.unit_cost_gbp,
        referrals = pc.referrals,
    );
    let _ = write!(
        html,
        r##"<h2>Referrals per month</h2>
<p class="legend"><span style="background:#005eb8"></span>proactive care<span style="background:#ed8b00"></span>Bromley @Home</p>
{months}
<h2>Urgent contacts before and after the MDT assessment</h2>
{before_after}
<h2>Bromley @Home</h2>
<p id="at-home">{at_home_referrals} referrals; {admitted} ({admitted_pct:.1}%) admitted within {days} days.</p>
{at_home_chart}
<h2>Care homes</h2>
<p id="residents">{residents} residents; {discharges} hospital discharges in the period, {reviewed} reviewed after.</p>
{compliance}
<h2>Worklist: residents overdue</h2>
"##,
        months = months_chart(months),
        before_after = before_after_chart(report),
        at_home_referrals = at_home.referrals,
        admitted = at_home.admitted,
        admitted_pct = at_home.admitted_pct,
        days = at_home.admitted_within_days,
        at_home_chart = percent_bars(&[(
            &format!(
                "Admitted within {} days of referral",
                at_home.admitted_within_days
            ),
            at_home.admitted_pct
        )]),
        residents = homes.residents,
        discharges = homes.discharges,
        reviewed = homes.discharges_reviewed,
        compliance = percent_bars(&[
            ("Admission assessment", homes.admission_assessment_pct),
            (
                "Assessed in the last 6 months",
                homes.assessed_last_6_months_pct
            ),
            (
                "Medicines review in the last 12 months",
                homes.medicines_review_last_12_months_pct
            ),
            (
                "Discharges followed by a review",
                homes.post_discharge_review_pct
            ),
        ]),
    );
    if overdue.is_empty() {
        html.push_str("<p id=\"worklist\">No resident is overdue.</p>\n");
    } else {
        html.push_str(
            "<table id=\"worklist\"><thead><tr><th>NHS number</th><th>Name</th><th>Care home</th><th>Overdue</th></tr></thead><tbody>\n",
        );
        for item in overdue {
            let _ = writeln!(
                html,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&item.person.nhs_number),
                esc(&item.person.name),
                esc(&item.person.care_home),
                esc(&item.reasons.join("; "))
            );
        }
        html.push_str("</tbody></table>\n");
    }
    html.push_str("</body></html>\n");
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pounds_are_grouped_and_text_is_escaped() {
        assert_eq!(gbp(80998.12), "£80,998");
        assert_eq!(gbp(-1279.88), "−£1,280");
        assert_eq!(gbp(999.0), "£999");
        assert_eq!(
            esc("<O'Brien & \"Sons\">"),
            "&lt;O&#39;Brien &amp; &quot;Sons&quot;&gt;"
        );
    }
}
