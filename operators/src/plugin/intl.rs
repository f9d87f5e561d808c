//! `Intl` for plugins, on ICU4X with its compiled CLDR data: the prelude's `Intl.*` classes
//! resolve their options in JavaScript (as ECMA-402's abstract operations do) and hand the
//! resolved options here as JSON; these functions format with ICU4X and return the text.
//! Time zones come from jiff's bundled IANA database, so a plugin's output does not depend on
//! the machine's tzdata.
//!
//! Formatters are cached per thread, keyed by their locale and options: a plugin that formats
//! every event's timestamp builds its formatter once. The cache is bounded (it is cleared when
//! full), since its memory lies outside any plugin's heap limit.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use fixed_decimal::{Decimal, FloatPrecision, SignedRoundingMode, UnsignedRoundingMode};
use icu_datetime::DateTimeFormatter;
use icu_datetime::fieldbag::DateTimeFieldBag;
use icu_datetime::fieldbag::field;
use icu_datetime::fieldsets::builder::{DateFields, FieldSetBuilder};
use icu_datetime::fieldsets::enums::CompositeDateTimeFieldSet;
use icu_datetime::options::{Length, TimePrecision, YearStyle};
use icu_decimal::options::{DecimalFormatterOptions, GroupingStrategy};
use icu_decimal::{CompactDecimalFormatter, DecimalFormatter};
use icu_locale::Locale;
use serde::Deserialize;

/// Formatters kept per thread before the cache is cleared.
const CACHE_ENTRIES: usize = 256;

// Each entry sits in an `Rc` of its own, sized to its variant's needs once: boxing the larger
// formatters would only add a second allocation.
#[allow(clippy::large_enum_variant)]
enum Cached {
    /// A date formatter with its options and zone, so a cache hit parses and looks up nothing.
    Date(DateTimeFormatter<CompositeDateTimeFieldSet>, DateOptions, jiff::tz::TimeZone),
    /// A number formatter with its options (rounding is applied per call).
    Number(NumberFormatter, NumberOptions),
    Collator(icu_collator::Collator),
    Plural(icu_plurals::PluralRules),
    Relative(icu_experimental::relativetime::RelativeTimeFormatter),
    ZoneName(icu_datetime::NoCalendarFormatter<icu_datetime::fieldsets::zone::SpecificLong>),
}

thread_local! {
    static CACHE: RefCell<HashMap<String, Rc<Cached>>> = RefCell::new(HashMap::new());
}

fn cached(key: String, build: impl FnOnce() -> Result<Cached, String>) -> Result<Rc<Cached>, String> {
    if let Some(hit) = CACHE.with(|c| c.borrow().get(&key).cloned()) {
        return Ok(hit);
    }
    let made = Rc::new(build()?);
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() >= CACHE_ENTRIES {
            c.clear();
        }
        c.insert(key, made.clone());
    });
    Ok(made)
}

/// The canonical form of a BCP 47 language tag (`en-us` → `en-US`), or `None` when it is not
/// one (the prelude throws ECMA-402's `RangeError`).
pub(crate) fn canonical_locale(tag: &str) -> Option<String> {
    Locale::try_from_str(tag).ok().map(|l| l.to_string())
}

fn locale(tag: &str) -> Result<Locale, String> {
    Locale::try_from_str(tag).map_err(|_| format!("Incorrect locale information provided: {tag}"))
}

/// The canonical IANA name of a time zone (`utc` → `UTC`), or `None` when the bundled database
/// does not know it.
pub(crate) fn canonical_zone(name: &str) -> Option<String> {
    if name.eq_ignore_ascii_case("utc") || name.eq_ignore_ascii_case("etc/utc") || name.eq_ignore_ascii_case("gmt") {
        return Some("UTC".into());
    }
    jiff::tz::db().get(name).ok().and_then(|tz| tz.iana_name().map(str::to_string))
}

/// The process's time zone (from `TZ`, else the system's), as Node reports it.
pub(crate) fn default_zone() -> String {
    match std::env::var("TZ") {
        Ok(tz) if !tz.is_empty() => canonical_zone(tz.trim_start_matches(':')).unwrap_or_else(|| "UTC".into()),
        _ => jiff::tz::TimeZone::try_system().ok().and_then(|tz| tz.iana_name().map(str::to_string)).unwrap_or_else(|| "UTC".into()),
    }
}

// ---- dates ---------------------------------------------------------------------------------

/// `Intl.DateTimeFormat`'s resolved options, as the prelude passes them.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct DateOptions {
    date_style: Option<String>,
    time_style: Option<String>,
    era: Option<String>,
    weekday: Option<String>,
    year: Option<String>,
    month: Option<String>,
    day: Option<String>,
    hour: Option<String>,
    minute: Option<String>,
    second: Option<String>,
    fractional_second_digits: Option<u8>,
    hour12: Option<bool>,
    hour_cycle: Option<String>,
    time_zone: Option<String>,
}

fn style_length(style: &str) -> Length {
    match style {
        "full" | "long" => Length::Long,
        "medium" => Length::Medium,
        _ => Length::Short,
    }
}

fn field_set(o: &DateOptions) -> Result<CompositeDateTimeFieldSet, String> {
    let mut builder = if o.date_style.is_some() || o.time_style.is_some() {
        let mut b = FieldSetBuilder::new();
        b.length = Some(style_length(o.date_style.as_deref().or(o.time_style.as_deref()).unwrap_or("medium")));
        b.date_fields = o.date_style.as_deref().map(|s| if s == "full" { DateFields::YMDE } else { DateFields::YMD });
        b.time_precision = o.time_style.as_deref().map(|s| if s == "short" { TimePrecision::Minute } else { TimePrecision::Second });
        if o.date_style.is_some() {
            b.year_style = Some(if o.date_style.as_deref() == Some("short") { YearStyle::Auto } else { YearStyle::Full });
        }
        b
    } else {
        let mut bag = DateTimeFieldBag::default();
        let text = |v: &Option<String>| v.as_deref().map(str::to_string);
        bag.era = text(&o.era).map(|v| match v.as_str() {
            "long" => field::Era::Long,
            "narrow" => field::Era::Narrow,
            _ => field::Era::Short,
        });
        bag.weekday = text(&o.weekday).map(|v| match v.as_str() {
            "long" => field::Weekday::Long,
            "narrow" => field::Weekday::Narrow,
            _ => field::Weekday::Short,
        });
        bag.year = text(&o.year).map(|v| if v == "2-digit" { field::Year::TwoDigit } else { field::Year::Numeric });
        bag.month = text(&o.month).map(|v| match v.as_str() {
            "2-digit" => field::Month::TwoDigit,
            "long" => field::Month::Long,
            "short" => field::Month::Short,
            "narrow" => field::Month::Narrow,
            _ => field::Month::Numeric,
        });
        bag.day = text(&o.day).map(|v| if v == "2-digit" { field::Day::TwoDigit } else { field::Day::Numeric });
        bag.hour = text(&o.hour).map(|v| if v == "2-digit" { field::Hour::TwoDigit } else { field::Hour::Numeric });
        bag.minute = text(&o.minute).map(|v| if v == "2-digit" { field::Minute::TwoDigit } else { field::Minute::Numeric });
        bag.second = text(&o.second).map(|v| if v == "2-digit" { field::Second::TwoDigit } else { field::Second::Numeric });
        bag.fractional_second_digits = match o.fractional_second_digits {
            Some(1) => Some(field::FractionalSecondDigits::F1),
            Some(2) => Some(field::FractionalSecondDigits::F2),
            Some(3) => Some(field::FractionalSecondDigits::F3),
            _ => None,
        };
        bag.hour_kind = hour_clock(o).map(|twelve| if twelve { field::HourKind::Clock12 } else { field::HourKind::Clock24 });
        bag.to_field_set_builder()
    };
    if builder.date_fields.is_none() && builder.time_precision.is_none() {
        builder.date_fields = Some(DateFields::YMD);
    }
    builder.build_composite_datetime().map_err(|e| format!("unsupported date/time options: {e:?}"))
}

/// `Some(true)` for a 12-hour clock, `Some(false)` for 24, `None` for the locale's.
fn hour_clock(o: &DateOptions) -> Option<bool> {
    o.hour12.or_else(|| o.hour_cycle.as_deref().map(|c| c == "h11" || c == "h12"))
}

/// Formats the instant `epoch_ms` (milliseconds since 1970, UTC) for `locale`.
pub(crate) fn format_date(tag: &str, options_json: &str, epoch_ms: f64) -> Result<String, String> {
    if !epoch_ms.is_finite() || epoch_ms.abs() > 8.64e15 {
        return Err("Invalid time value".into());
    }
    let entry = cached(format!("date\u{0}{tag}\u{0}{options_json}"), || {
        let o: DateOptions = serde_json::from_str(options_json).map_err(|e| format!("bad date options: {e}"))?;
        let zone_name = o.time_zone.clone().unwrap_or_else(default_zone);
        let tz = if zone_name == "UTC" {
            jiff::tz::TimeZone::UTC
        } else {
            jiff::tz::db().get(&zone_name).map_err(|_| format!("Invalid time zone specified: {zone_name}"))?
        };
        let loc = locale(tag)?;
        let mut prefs = icu_datetime::DateTimeFormatterPreferences::from(&loc);
        if let Some(twelve) = hour_clock(&o) {
            use icu_locale::preferences::extensions::unicode::keywords::HourCycle;
            prefs.hour_cycle = Some(if twelve { HourCycle::H12 } else { HourCycle::H23 });
        }
        let formatter = DateTimeFormatter::try_new(prefs, field_set(&o)?).map_err(icu)?;
        Ok(Cached::Date(formatter, o, tz))
    })?;
    let Cached::Date(f, o, tz) = &*entry else { unreachable!("date key holds a date formatter") };
    let wall = WallClock::of(tz, epoch_ms.floor() as i64)?;
    let gregorian = f.calendar().kind() == icu_calendar::AnyCalendarKind::Gregorian;
    // ICU4X writes a year asked for alone as `2-digit` with all its digits.
    let two_digit = o.year.as_deref() == Some("2-digit");
    let text = match o.era.is_none() && gregorian && (two_digit || !PLAIN_YEARS.contains(&wall.year)) {
        true => through_proxy_year(f, &wall, two_digit)
            .unwrap_or_else(|| f.format(&icu_time::DateTime { date: wall.date, time: wall.time }).to_string()),
        false => f.format(&icu_time::DateTime { date: wall.date, time: wall.time }).to_string(),
    };
    // V8 writes a plain space where CLDR now has a narrow no-break one ("10:20 AM"), for the
    // web's sake; plugins were written against that.
    Ok(unpad_numeric_date(tag, o, text.replace('\u{202f}', " "), wall.month, wall.day))
}

/// Milliseconds in 400 Gregorian years (146,097 days, a whole number of weeks).
const CYCLE_MS: i64 = 146_097 * 86_400_000;

/// An instant's date and time on the clocks of a zone.
struct WallClock {
    date: icu_calendar::Date<icu_calendar::Iso>,
    time: icu_time::Time,
    year: i32,
    month: u8,
    day: u8,
    /// The zone's offset from UTC then, in seconds.
    offset: i32,
}

impl WallClock {
    /// jiff's instants end at 9999-12-30T22:00Z and begin at -9999-01-02, ECMAScript's reach
    /// ±8.64e15 ms (±275,760 years), and "9999-12-31" is a common "never" in data. An instant
    /// outside jiff's range is moved into it by whole 400-year cycles, which keep weekdays, leap
    /// years and (past a zone's last transition, before its first) the zone's rules, and the
    /// date is moved back by as many days.
    fn of(tz: &jiff::tz::TimeZone, ms: i64) -> Result<WallClock, String> {
        const DAY_MS: i64 = 86_400_000;
        let low = jiff::Timestamp::MIN.as_millisecond() + DAY_MS;
        let high = jiff::Timestamp::MAX.as_millisecond() - DAY_MS;
        let cycles = if ms > high {
            (ms - high + CYCLE_MS - 1) / CYCLE_MS
        } else if ms < low {
            -((low - ms + CYCLE_MS - 1) / CYCLE_MS)
        } else {
            0
        };
        let ts = jiff::Timestamp::from_millisecond(ms - cycles * CYCLE_MS).map_err(|e| e.to_string())?;
        let zoned = ts.to_zoned(tz.clone());
        let civil = zoned.datetime();
        let moved = icu_calendar::Date::try_new_iso(i32::from(civil.year()), civil.month() as u8, civil.day() as u8).map_err(icu)?;
        let date = icu_calendar::Date::from_rata_die(moved.to_rata_die() + cycles * 146_097, icu_calendar::Iso);
        let time =
            icu_time::Time::try_new(civil.hour() as u8, civil.minute() as u8, civil.second() as u8, civil.subsec_nanosecond() as u32)
                .map_err(icu)?;
        let year = i32::from(civil.year()) + i32::try_from(cycles * 400).map_err(|e| e.to_string())?;
        Ok(WallClock { date, time, year, month: civil.month() as u8, day: civil.day() as u8, offset: zoned.offset().seconds() })
    }
}

/// The years ICU4X writes as ECMA-402 engines do. Outside them it writes the era ("1/1/77 AD",
/// "6/15/2 BC": below the year 1000, in another pattern that some locales reorder) and the whole
/// year where the pattern asks for two digits ("12/31/9999" for `dateStyle: 'short'`); V8 writes
/// the era only when asked for and two digits as asked ("1/1/77", "6/15/2", "12/31/99").
const PLAIN_YEARS: std::ops::RangeInclusive<i32> = 1950..=2049;

/// Formats a Gregorian date outside [`PLAIN_YEARS`] as V8 does: the same day in a year of
/// [`PLAIN_YEARS`] that has the same calendar (leap or not, 1 January on the same weekday, so
/// every date falls on the same weekday), with that year's digits replaced by the real year's
/// (the era year, 1 − year, before the year 1; its last two digits where the pattern has two).
/// Two digits are written for `two_digit` in any case. `None` when the year is not written in
/// plain decimal digits.
fn through_proxy_year(f: &DateTimeFormatter<CompositeDateTimeFieldSet>, wall: &WallClock, two_digit: bool) -> Option<String> {
    let year = wall.year;
    let first = icu_calendar::Date::from_rata_die(wall.date.to_rata_die() - i64::from(wall.date.day_of_year().0 - 1), icu_calendar::Iso);
    let proxy_year = PLAIN_YEARS.clone().find(|&p| {
        icu_calendar::Date::try_new_iso(p, 1, 1)
            .is_ok_and(|d| d.is_in_leap_year() == first.is_in_leap_year() && d.weekday() == first.weekday())
    })?;
    let proxy = icu_calendar::Date::try_new_iso(proxy_year, wall.month, wall.day).ok()?;
    let formatted = f.format(&icu_time::DateTime { date: proxy, time: wall.time });
    let mut sink = PartsSink { text: String::new(), years: Vec::new() };
    writeable::Writeable::write_to_parts(&formatted, &mut sink).ok()?;
    let shown = if year < 1 { 1 - i64::from(year) } else { i64::from(year) };
    let full = proxy_year.to_string();
    let mut text = sink.text;
    for range in sink.years.into_iter().rev() {
        // The proxy year as the locale wrote it, all four digits or the last two, in a decimal
        // digit set (Unicode's run from its zero: ASCII, Arabic-Indic, Devanagari...).
        let written: Vec<char> = text[range.clone()].chars().collect();
        let (proxy_digits, real) = match written.len() {
            4 if two_digit => (full.as_str(), format!("{:02}", shown % 100)),
            4 => (full.as_str(), shown.to_string()),
            2 => (&full[2..], format!("{:02}", shown % 100)),
            _ => return None,
        };
        let zero = u32::from(written[0]).checked_sub(u32::from(proxy_digits.as_bytes()[0] - b'0'))?;
        let digits_of = |n: &str| n.bytes().map(|b| char::from_u32(zero + u32::from(b - b'0'))).collect::<Option<String>>();
        if digits_of(proxy_digits)? != text[range.clone()] {
            return None;
        }
        text.replace_range(range, &digits_of(&real)?);
    }
    Some(text)
}

/// Writes the formatted text and notes where the year was written.
struct PartsSink {
    text: String,
    years: Vec<std::ops::Range<usize>>,
}

impl std::fmt::Write for PartsSink {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.text.push_str(s);
        Ok(())
    }
}

impl writeable::PartsWrite for PartsSink {
    type SubPartsWrite = PartsSink;
    fn with_part(&mut self, part: writeable::Part, mut f: impl FnMut(&mut PartsSink) -> std::fmt::Result) -> std::fmt::Result {
        let start = self.text.len();
        f(self)?;
        if part == icu_datetime::parts::YEAR {
            self.years.push(start..self.text.len());
        }
        Ok(())
    }
}

/// ICU4X formats an all-numeric date with the locale's short date pattern; ECMA-402 engines
/// use CLDR's `yMd` skeleton pattern, which in these languages does not pad the day and/or
/// the month with a zero (de `27.1.2021`, pl `5.01.2021`, ja `2021/1/27`). The table holds
/// (language, day unpadded, month unpadded), from CLDR's `availableFormats/yMd`.
const UNPADDED_YMD: &[(&str, bool, bool)] = &[
    ("de", true, true),
    ("es", true, true),
    ("nl", true, true),
    ("ja", true, true),
    ("zh", true, true),
    ("ko", true, true),
    ("pl", true, false),
];

fn unpad_numeric_date(tag: &str, o: &DateOptions, text: String, month: u8, day: u8) -> String {
    let language = tag.split(['-', '_']).next().unwrap_or("");
    let Some(&(_, unpad_day, unpad_month)) = UNPADDED_YMD.iter().find(|(l, _, _)| *l == language) else { return text };
    let numeric = |v: &Option<String>| v.as_deref() == Some("numeric");
    if !(numeric(&o.month) && numeric(&o.day)) || o.weekday.is_some() || o.date_style.is_some() {
        return text;
    }
    // The date's digit runs come first; a run "0N" is the day or the month written padded.
    let (mut day_done, mut month_done) = (!unpad_day, !unpad_month);
    let mut out = String::with_capacity(text.len());
    let mut runs = 0;
    let mut chars = text.char_indices().peekable();
    while let Some((start, c)) = chars.next() {
        if !c.is_ascii_digit() {
            out.push(c);
            continue;
        }
        let mut end = start + 1;
        while let Some(&(i, d)) = chars.peek() {
            if !d.is_ascii_digit() {
                break;
            }
            end = i + 1;
            chars.next();
        }
        let run = &text[start..end];
        runs += 1;
        let padded = runs <= 3 && run.len() == 2 && run.starts_with('0');
        let value = run.parse::<u8>().unwrap_or(0);
        if padded && !day_done && value == day {
            day_done = true;
            out.push_str(&run[1..]);
        } else if padded && !month_done && value == month {
            month_done = true;
            out.push_str(&run[1..]);
        } else {
            out.push_str(run);
        }
    }
    out
}

/// The long name of the process's time zone at `epoch_ms` ("Eastern Standard Time"), which
/// V8 appends to `Date#toString`.
pub(crate) fn zone_long_name(epoch_ms: f64) -> Option<String> {
    use icu_datetime::NoCalendarFormatter;
    use icu_datetime::fieldsets::zone::SpecificLong;
    use icu_time::zone::{UtcOffset, ZoneNameTimestamp};
    if !epoch_ms.is_finite() {
        return None;
    }
    let name = default_zone();
    let tz = if name == "UTC" { jiff::tz::TimeZone::UTC } else { jiff::tz::db().get(&name).ok()? };
    let offset = WallClock::of(&tz, epoch_ms.floor() as i64).ok()?.offset;
    let key = "zone-name\u{0}en".to_string();
    let f = cached(key, || NoCalendarFormatter::try_new(icu_locale::locale!("en").into(), SpecificLong).map(Cached::ZoneName).map_err(icu))
        .ok()?;
    let Cached::ZoneName(f) = &*f else { unreachable!("zone-name key holds a zone formatter") };
    let info = icu_time::TimeZone::from_iana_id(if name == "UTC" { "Etc/UTC" } else { &name })
        .with_offset(UtcOffset::try_from_seconds(offset).ok())
        .with_zone_name_timestamp(ZoneNameTimestamp::from_epoch_seconds((epoch_ms / 1000.0).floor() as i64));
    Some(f.format(&info).to_string())
}

// ---- numbers -------------------------------------------------------------------------------

/// `Intl.NumberFormat`'s resolved options, as the prelude passes them.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct NumberOptions {
    style: Option<String>,
    currency: Option<String>,
    currency_display: Option<String>,
    notation: Option<String>,
    compact_display: Option<String>,
    use_grouping: Option<String>,
    minimum_integer_digits: Option<i16>,
    minimum_fraction_digits: Option<i16>,
    maximum_fraction_digits: Option<i16>,
    minimum_significant_digits: Option<i16>,
    maximum_significant_digits: Option<i16>,
    /// Compact notation's own rounding (no digit options given).
    compact_rounding: bool,
}

/// Rounds as ECMA-402 says: the number's shortest round-trip decimal, half away from zero.
pub(crate) fn rounded(x: f64, o: &NumberOptions) -> Result<Decimal, String> {
    let mut d = Decimal::try_from_f64(x, FloatPrecision::RoundTrip).map_err(icu)?;
    let half = SignedRoundingMode::Unsigned(UnsignedRoundingMode::HalfExpand);
    if let (Some(min), Some(max)) = (o.minimum_significant_digits, o.maximum_significant_digits) {
        if !d.absolute.is_zero() {
            let top = d.absolute.nonzero_magnitude_start();
            d.round_with_mode(top - max + 1, half);
            d.absolute.trim_end();
            let top = d.absolute.nonzero_magnitude_start();
            d.absolute.pad_end(top - min + 1);
        } else {
            d.absolute.pad_end(1 - min);
        }
    } else {
        let max = o.maximum_fraction_digits.unwrap_or(3);
        let min = o.minimum_fraction_digits.unwrap_or(0);
        d.round_with_mode(-max, half);
        d.absolute.trim_end();
        d.absolute.pad_end(-min);
    }
    d.absolute.pad_start(o.minimum_integer_digits.unwrap_or(1));
    Ok(d)
}

fn decimal_options(o: &NumberOptions) -> DecimalFormatterOptions {
    let mut options = DecimalFormatterOptions::default();
    options.grouping_strategy = Some(match o.use_grouping.as_deref() {
        Some("false") => GroupingStrategy::Never,
        Some("always") => GroupingStrategy::Always,
        Some("min2") => GroupingStrategy::Min2,
        _ => GroupingStrategy::Auto,
    });
    options
}

/// The formatter a `NumberFormat`'s style and notation need.
enum NumberFormatter {
    Decimal(DecimalFormatter),
    Compact(CompactDecimalFormatter),
    Percent(icu_experimental::dimension::percent::formatter::PercentFormatter<DecimalFormatter>),
    Currency(icu_experimental::dimension::currency::formatter::CurrencyFormatter<DecimalFormatter>),
}

/// ICU4X's load errors, as the `RangeError`'s text.
fn icu(e: impl std::fmt::Debug) -> String {
    format!("{e:?}")
}

fn number_formatter(tag: &str, o: &NumberOptions) -> Result<NumberFormatter, String> {
    use icu_experimental::dimension::currency::CurrencyType;
    use icu_experimental::dimension::currency::formatter::CurrencyFormatter;
    use icu_experimental::dimension::percent::formatter::PercentFormatter;
    let loc = locale(tag)?;
    let style = o.style.as_deref().unwrap_or("decimal");
    Ok(if o.notation.as_deref() == Some("compact") && style == "decimal" {
        let made = if o.compact_display.as_deref() == Some("long") {
            CompactDecimalFormatter::try_new_long((&loc).into(), decimal_options(o).into())
        } else {
            CompactDecimalFormatter::try_new_short((&loc).into(), decimal_options(o).into())
        };
        NumberFormatter::Compact(made.map_err(icu)?)
    } else if style == "percent" {
        let df = DecimalFormatter::try_new((&loc).into(), decimal_options(o)).map_err(icu)?;
        NumberFormatter::Percent(PercentFormatter::try_new_with_decimal_formatter((&loc).into(), df, Default::default()).map_err(icu)?)
    } else if style == "currency" {
        let code = o.currency.clone().unwrap_or_default().to_ascii_uppercase();
        let currency = CurrencyType::try_from_str(&code).map_err(|_| format!("Invalid currency code: {code}"))?;
        let made = match o.currency_display.as_deref() {
            Some("code") => CurrencyFormatter::try_new_code((&loc).into(), currency, Default::default()),
            Some("name") => CurrencyFormatter::try_new_name((&loc).into(), currency),
            Some("narrowSymbol") => CurrencyFormatter::try_new_symbol_narrow((&loc).into(), currency, Default::default()),
            _ => CurrencyFormatter::try_new_symbol((&loc).into(), currency, Default::default()),
        };
        NumberFormatter::Currency(made.map_err(icu)?)
    } else {
        NumberFormatter::Decimal(DecimalFormatter::try_new((&loc).into(), decimal_options(o)).map_err(icu)?)
    })
}

/// Formats `x` (finite) for `locale`; NaN and infinities are the prelude's.
pub(crate) fn format_number(tag: &str, options_json: &str, x: f64) -> Result<String, String> {
    let entry = cached(format!("number\u{0}{tag}\u{0}{options_json}"), || {
        let o: NumberOptions = serde_json::from_str(options_json).map_err(|e| format!("bad number options: {e}"))?;
        Ok(Cached::Number(number_formatter(tag, &o)?, o))
    })?;
    let Cached::Number(f, o) = &*entry else { unreachable!("number key holds a number formatter") };
    Ok(match f {
        // Without digit options the compact formatter applies compact rounding itself (two
        // significant digits below 100 of the unit: 1.2M, 12K; whole units above: 123K), as
        // ECMA-402 does.
        NumberFormatter::Compact(f) if o.compact_rounding => {
            f.format(&Decimal::try_from_f64(x, FloatPrecision::RoundTrip).map_err(icu)?).to_string()
        }
        NumberFormatter::Compact(f) => f.format(&rounded(x, o)?).to_string(),
        NumberFormatter::Percent(f) => f.format(&rounded(x * 100.0, o)?).to_string(),
        NumberFormatter::Currency(f) => f.format_fixed_decimal(&rounded(x, o)?).to_string(),
        NumberFormatter::Decimal(f) => f.format(&rounded(x, o)?).to_string(),
    })
}

// ---- collation, plurals, relative time, case -----------------------------------------------

/// `Intl.Collator`'s resolved options.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct CollatorOptions {
    sensitivity: Option<String>,
    numeric: bool,
    ignore_punctuation: bool,
    case_first: Option<String>,
}

/// -1, 0 or 1 as `Intl.Collator#compare`.
pub(crate) fn compare(tag: &str, options_json: &str, a: &str, b: &str) -> Result<i32, String> {
    let key = format!("collator\u{0}{tag}\u{0}{options_json}");
    let f = cached(key, || {
        use icu_collator::options::{AlternateHandling, CaseLevel, CollatorOptions as Icu, Strength};
        use icu_collator::preferences::{CollationCaseFirst, CollationNumericOrdering};
        let o: CollatorOptions = serde_json::from_str(options_json).map_err(|e| format!("bad collator options: {e}"))?;
        let loc = locale(tag)?;
        let mut prefs = icu_collator::CollatorPreferences::from(&loc);
        if o.numeric {
            prefs.numeric_ordering = Some(CollationNumericOrdering::True);
        }
        prefs.case_first = match o.case_first.as_deref() {
            Some("upper") => Some(CollationCaseFirst::Upper),
            Some("lower") => Some(CollationCaseFirst::Lower),
            _ => prefs.case_first,
        };
        let mut options = Icu::default();
        match o.sensitivity.as_deref() {
            Some("base") => options.strength = Some(Strength::Primary),
            Some("accent") => options.strength = Some(Strength::Secondary),
            Some("case") => {
                options.strength = Some(Strength::Primary);
                options.case_level = Some(CaseLevel::On);
            }
            _ => options.strength = Some(Strength::Tertiary),
        }
        if o.ignore_punctuation {
            options.alternate_handling = Some(AlternateHandling::Shifted);
        }
        icu_collator::Collator::try_new(prefs, options).map(|c| Cached::Collator(c.static_to_owned())).map_err(icu)
    })?;
    let Cached::Collator(c) = &*f else { unreachable!("collator key holds a collator") };
    Ok(c.as_borrowed().compare(a, b) as i32)
}

/// The plural category of `x` (`one`, `other`…) for `Intl.PluralRules#select`, with the
/// rules' default digits (0 to 3 fraction digits, as `resolvedOptions` reports).
pub(crate) fn plural(tag: &str, ordinal: bool, x: f64) -> Result<&'static str, String> {
    use icu_plurals::PluralCategory as C;
    let key = format!("plural\u{0}{tag}\u{0}{ordinal}");
    let f = cached(key, || {
        let loc = locale(tag)?;
        let made = if ordinal {
            icu_plurals::PluralRules::try_new_ordinal((&loc).into())
        } else {
            icu_plurals::PluralRules::try_new_cardinal((&loc).into())
        };
        made.map(Cached::Plural).map_err(icu)
    })?;
    let Cached::Plural(rules) = &*f else { unreachable!("plural key holds plural rules") };
    let d = rounded(x.abs(), &NumberOptions::default())?;
    Ok(match rules.category_for(&d) {
        C::Zero => "zero",
        C::One => "one",
        C::Two => "two",
        C::Few => "few",
        C::Many => "many",
        C::Other => "other",
    })
}

/// `Intl.RelativeTimeFormat#format`: `style` long/short/narrow, `unit` singular, `numeric`
/// always/auto.
pub(crate) fn relative_time(tag: &str, style: &str, numeric_auto: bool, unit: &str, x: f64) -> Result<String, String> {
    use icu_experimental::relativetime::options::Numeric;
    use icu_experimental::relativetime::{RelativeTimeFormatter as R, RelativeTimeFormatterOptions};
    let key = format!("relative\u{0}{tag}\u{0}{style}\u{0}{numeric_auto}\u{0}{unit}");
    let f = cached(key, || {
        let loc = locale(tag)?;
        let prefs = (&loc).into();
        let mut options = RelativeTimeFormatterOptions::default();
        options.numeric = Some(if numeric_auto { Numeric::Auto } else { Numeric::Always });
        let made = match (style, unit) {
            ("short", "second") => R::try_new_short_second(prefs, options),
            ("short", "minute") => R::try_new_short_minute(prefs, options),
            ("short", "hour") => R::try_new_short_hour(prefs, options),
            ("short", "day") => R::try_new_short_day(prefs, options),
            ("short", "week") => R::try_new_short_week(prefs, options),
            ("short", "month") => R::try_new_short_month(prefs, options),
            ("short", "quarter") => R::try_new_short_quarter(prefs, options),
            ("short", "year") => R::try_new_short_year(prefs, options),
            ("narrow", "second") => R::try_new_narrow_second(prefs, options),
            ("narrow", "minute") => R::try_new_narrow_minute(prefs, options),
            ("narrow", "hour") => R::try_new_narrow_hour(prefs, options),
            ("narrow", "day") => R::try_new_narrow_day(prefs, options),
            ("narrow", "week") => R::try_new_narrow_week(prefs, options),
            ("narrow", "month") => R::try_new_narrow_month(prefs, options),
            ("narrow", "quarter") => R::try_new_narrow_quarter(prefs, options),
            ("narrow", "year") => R::try_new_narrow_year(prefs, options),
            (_, "second") => R::try_new_long_second(prefs, options),
            (_, "minute") => R::try_new_long_minute(prefs, options),
            (_, "hour") => R::try_new_long_hour(prefs, options),
            (_, "day") => R::try_new_long_day(prefs, options),
            (_, "week") => R::try_new_long_week(prefs, options),
            (_, "month") => R::try_new_long_month(prefs, options),
            (_, "quarter") => R::try_new_long_quarter(prefs, options),
            (_, "year") => R::try_new_long_year(prefs, options),
            _ => return Err(format!("Invalid unit argument for format() '{unit}'")),
        };
        made.map(Cached::Relative).map_err(icu)
    })?;
    let Cached::Relative(f) = &*f else { unreachable!("relative key holds a relative-time formatter") };
    let d = Decimal::try_from_f64(x, FloatPrecision::RoundTrip).map_err(icu)?;
    Ok(f.format(d).to_string())
}

/// `String#toLocaleUpperCase` / `toLocaleLowerCase` with the locale's rules (Turkish dotted i…).
pub(crate) fn change_case(tag: &str, text: &str, upper: bool) -> Result<String, String> {
    let loc = locale(tag)?;
    let mapper = icu_casemap::CaseMapper::new();
    Ok(if upper { mapper.uppercase_to_string(text, &loc.id).into_owned() } else { mapper.lowercase_to_string(text, &loc.id).into_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locales_and_zones_are_canonicalised() {
        assert_eq!(canonical_locale("en-us").as_deref(), Some("en-US"));
        assert_eq!(canonical_locale("not a tag"), None);
        assert_eq!(canonical_zone("utc").as_deref(), Some("UTC"));
        assert_eq!(canonical_zone("Mars/Base"), None);
    }

    #[test]
    fn formatters_are_cached_and_bounded() {
        for i in 0..(CACHE_ENTRIES + 10) {
            format_number("en", &format!("{{\"minimumIntegerDigits\":{}}}", 1 + i % 20), 1.0).unwrap();
            format_number("en", &format!("{{\"useGrouping\":\"always\",\"maximumFractionDigits\":{}}}", i), 1.0).unwrap();
        }
        assert!(CACHE.with(|c| c.borrow().len()) <= CACHE_ENTRIES);
    }

    #[test]
    fn the_wall_clock_covers_ecmascripts_whole_range() {
        const LIMIT: i64 = 8_640_000_000_000_000;
        let edge = |t: jiff::Timestamp| t.as_millisecond();
        // Across jiff's two ends, at ECMAScript's, and spread over the whole range.
        let mut instants = vec![-LIMIT, LIMIT, 0, -1];
        for end in [edge(jiff::Timestamp::MIN), edge(jiff::Timestamp::MAX)] {
            instants.extend((-72..=72).map(|hours: i64| end + hours * 3_600_000));
            instants.extend((-2..=2).map(|ms: i64| end + ms));
        }
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            instants.push((x % (2 * LIMIT as u64 + 1)) as i64 - LIMIT);
        }
        for ms in instants {
            let w = WallClock::of(&jiff::tz::TimeZone::UTC, ms).unwrap_or_else(|e| panic!("{ms}: {e}"));
            // Hinnant's days-to-civil (the log's timestamps use it): shares nothing with jiff or ICU4X.
            let (year, month, day) = crate::plugin::log::civil_from_days(ms.div_euclid(86_400_000));
            let (month, day) = (month as u8, day as u8);
            let of_day = ms.rem_euclid(86_400_000);
            assert_eq!((i64::from(w.year), w.month, w.day), (year, month, day), "{ms}");
            let date = (i64::from(w.date.era_year().extended_year), w.date.month().ordinal, w.date.day_of_month().0);
            assert_eq!(date, (year, month, day), "{ms}: the date handed to ICU4X");
            let time = (w.time.hour.number(), w.time.minute.number(), w.time.second.number());
            assert_eq!(
                u32::from(time.0) * 3_600_000 + u32::from(time.1) * 60_000 + u32::from(time.2) * 1000,
                of_day as u32 / 1000 * 1000,
                "{ms}"
            );
            assert_eq!(w.offset, 0);
        }
    }

    #[test]
    fn a_zone_keeps_its_yearly_rule_past_jiffs_range() {
        let berlin = jiff::tz::db().get("Europe/Berlin").expect("Berlin");
        // 20000-07-01T12:00Z and 20000-01-01T12:00Z: summer and winter time.
        let july = jiff::civil::date(2000, 7, 1).at(12, 0, 0, 0).to_zoned(jiff::tz::TimeZone::UTC).unwrap().timestamp().as_millisecond();
        let january = jiff::civil::date(2000, 1, 1).at(12, 0, 0, 0).to_zoned(jiff::tz::TimeZone::UTC).unwrap().timestamp().as_millisecond();
        let moved = 45 * CYCLE_MS; // 18,000 years on
        let summer = WallClock::of(&berlin, july + moved).unwrap();
        let winter = WallClock::of(&berlin, january + moved).unwrap();
        assert_eq!((summer.year, summer.month, summer.day, summer.offset), (20000, 7, 1, 7200));
        assert_eq!((winter.year, winter.month, winter.day, winter.offset), (20000, 1, 1, 3600));
    }
}
