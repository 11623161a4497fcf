//! Dates as Postfix writes them: RFC 5322 `Date:` values, the UTC stamp
//! of generated Message-IDs, asctime(3) and syslog stamps. One place for
//! the calendar names and the C library's broken-down time.

use std::ffi::CStr;

pub const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
pub const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Seconds since the epoch now.
pub fn now() -> i64 {
    // SAFETY: time(NULL) has no preconditions.
    unsafe { libc::time(std::ptr::null_mut()) as i64 }
}

/// `t` broken down in local time (`local`) or UTC.
pub fn broken_down(t: i64, local: bool) -> libc::tm {
    let tt = t as libc::time_t;
    // SAFETY: tm is plain data; localtime_r/gmtime_r fill it from a valid time_t.
    unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if local {
            libc::localtime_r(&tt, &mut tm);
        } else {
            libc::gmtime_r(&tt, &mut tm);
        }
        tm
    }
}

pub fn day_name(tm: &libc::tm) -> &'static str {
    DAYS[tm.tm_wday.clamp(0, 6) as usize]
}

pub fn month_name(tm: &libc::tm) -> &'static str {
    MONTHS[tm.tm_mon.clamp(0, 11) as usize]
}

/// The syslog stamp `Mmm dd hh:mm:ss` of `t` in local time (the day
/// space-padded: `Dec  3 04:00:00`), as log lines and anvil's
/// statistics write it.
pub fn syslog_stamp(t: i64) -> String {
    let tm = broken_down(t, true);
    format!(
        "{} {:>2} {:02}:{:02}:{:02}",
        month_name(&tm),
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

/// A date as Postfix's `mail_date()` writes it, in local time:
/// `Tue, 25 Nov 2026 16:41:34 +0000 (UTC)` (day of month space-padded:
/// `Mon,  8 Jan 2024 ...`).
pub fn mail_date(t: i64) -> String {
    let tm = broken_down(t, true);
    let off = tm.tm_gmtoff;
    let sign = if off < 0 { '-' } else { '+' };
    let a = off.unsigned_abs();
    let mut s = format!(
        "{}, {:>2} {} {} {:02}:{:02}:{:02} {}{:02}{:02}",
        day_name(&tm),
        tm.tm_mday,
        month_name(&tm),
        tm.tm_year as i64 + 1900,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        sign,
        a / 3600,
        (a % 3600) / 60
    );
    if !tm.tm_zone.is_null() {
        // SAFETY: tm_zone points to a NUL-terminated static zone name.
        let zone = unsafe { CStr::from_ptr(tm.tm_zone) }.to_string_lossy();
        if !zone.is_empty() {
            s.push_str(&format!(" ({zone})"));
        }
    }
    s
}

/// `YYYYMMDDhhmmss` in UTC (a generated Message-ID's first part).
pub fn utc_stamp(t: i64) -> String {
    let tm = broken_down(t, false);
    format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}",
        tm.tm_year as i64 + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

/// asctime(3) in local time without the newline:
/// `Mon Jan  8 12:34:56 2024`.
pub fn asctime(t: i64) -> String {
    let tm = broken_down(t, true);
    format!(
        "{} {} {:>2} {:02}:{:02}:{:02} {}",
        day_name(&tm),
        month_name(&tm),
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        tm.tm_year as i64 + 1900
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_stamp_and_asctime_shapes() {
        assert_eq!(utc_stamp(1_704_717_296), "20240108123456");
        let a = asctime(1_704_717_296);
        assert_eq!(a.len(), 24, "{a}");
        assert!(a.ends_with(" 2024"), "{a}");
        let d = mail_date(1_704_200_000);
        assert!(d.contains(" 2024 "), "{d}");
    }
}
