//! The two releases of the Amazon Fashion data (McAuley lab, UCSD), one JSON object per line:
//!
//! - 2018 "Amazon Review Data": `AMAZON_FASHION.json.gz` (`reviewerID`, `asin`,
//!   `unixReviewTime` in seconds, `verified`, `overall`, `reviewText`, `summary`, `style` such as
//!   `{"Size:": " Large", "Color:": " Black"}`, `vote` as a string like `"1,234"`, ...) and
//!   `meta_AMAZON_FASHION.json.gz` (`asin`, `title`, `brand`, ...; duplicate asins, HTML in text).
//! - 2023 "Amazon Reviews'23": `Amazon_Fashion.jsonl.gz` (`user_id`, `parent_asin`, `asin`,
//!   `timestamp` in milliseconds, `verified_purchase`, `rating`, `title`, `text`) and
//!   `meta_Amazon_Fashion.jsonl.gz` (`parent_asin`, `title`, `store`, `details`, ...). Products
//!   are identified by `parent_asin`; sizes and colours come from the metadata's `details`.
//!
//! Both are normalised into [`Review`] and [`Meta`]. Lines are deserialised into borrowed
//! structs (strings are copied only when they hold escapes); fields not needed are skipped.
//!
//! Invariant: a review always has a non-empty user id and product id and a time in seconds;
//! a line that lacks one is refused with a reason, never guessed.

use std::{borrow::Cow, fmt, path::Path};

use serde::{
    de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor},
    Deserialize, Deserializer, Serialize,
};

use super::{progress::Progress, read, truncate_at_char, DataError, FastMap};

/// Release of a file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub enum Format {
    /// 2018 "Amazon Review Data" (`reviewerID`, `asin`, `unixReviewTime`).
    #[default]
    #[serde(rename = "amazon-2018")]
    Amazon2018,
    /// 2023 "Amazon Reviews'23" (`user_id`, `parent_asin`, `timestamp` in ms).
    #[serde(rename = "amazon-2023")]
    Amazon2023,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Amazon2018 => "amazon-2018",
            Self::Amazon2023 => "amazon-2023",
        })
    }
}

impl Format {
    /// The release of a reviews line: `reviewerID` means 2018, `user_id` 2023.
    pub fn of_review_line(line: &[u8]) -> Option<Self> {
        if memchr::memmem::find(line, b"\"reviewerID\"").is_some() {
            Some(Self::Amazon2018)
        } else if memchr::memmem::find(line, b"\"user_id\"").is_some() {
            Some(Self::Amazon2023)
        } else {
            None
        }
    }

    /// The release of a metadata line: `parent_asin` means 2023, `asin` 2018.
    pub fn of_meta_line(line: &[u8]) -> Option<Self> {
        if memchr::memmem::find(line, b"\"parent_asin\"").is_some() {
            Some(Self::Amazon2023)
        } else if memchr::memmem::find(line, b"\"asin\"").is_some() {
            Some(Self::Amazon2018)
        } else {
            None
        }
    }
}

/// One review, normalised across releases.
#[derive(Debug, Clone, PartialEq)]
pub struct Review<'a> {
    /// `reviewerID` (2018) or `user_id` (2023).
    pub user_id: Cow<'a, str>,
    /// `asin` (2018) or `parent_asin` (2023): the product.
    pub product_id: Cow<'a, str>,
    /// The variant reviewed (2023 `asin`); equal to `product_id` in 2018.
    pub asin: Cow<'a, str>,
    /// Seconds since the Unix epoch.
    pub time: i64,
    /// A verified purchase.
    pub verified: bool,
    /// Stars, 1 to 5 (0 when missing).
    pub rating: f32,
    /// Body (`reviewText` / `text`), empty when missing.
    pub text: Cow<'a, str>,
    /// Headline (`summary` / `title`), empty when missing.
    pub summary: Cow<'a, str>,
    /// Size from `style` (2018), normalised.
    pub size: Option<Cow<'a, str>>,
    /// Colour from `style` (2018), normalised.
    pub color: Option<Cow<'a, str>>,
}

/// A product's metadata, normalised across releases (HTML stripped, entities decoded).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    /// `asin` (2018) or `parent_asin` (2023).
    pub product_id: String,
    /// Title, at most [`MAX_TITLE_BYTES`] bytes.
    pub title: String,
    /// `brand` (2018) or `store` (2023).
    pub brand: String,
    /// Sizes from 2023 `details` (keys containing "size").
    pub sizes: Vec<String>,
    /// Colours from 2023 `details` (keys containing "color" / "colour").
    pub colors: Vec<String>,
}

/// Longest title kept, in bytes.
pub const MAX_TITLE_BYTES: usize = 512;
/// Longest size or colour kept, in bytes.
const MAX_ATTR_BYTES: usize = 64;

/// How to read the files.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReadOptions {
    /// Count malformed lines and go on.
    pub skip_bad_lines: bool,
    /// Drop reviews that are not verified purchases while reading.
    pub verified_only: bool,
}

/// A string that borrows from the input when it holds no escapes.
struct CowStr<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for CowStr<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CowStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// A value that may be a string, a list of strings, or anything else (ignored).
struct Strings(Vec<String>);

impl<'de> Deserialize<'de> for Strings {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Strings;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any value")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Strings(vec![v.to_owned()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = seq.next_element::<Strings>()? {
                    out.extend(v.0);
                }
                Ok(Strings(out))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Strings(Vec::new()))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Strings(Vec::new()))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(Strings(Vec::new()))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(Strings(Vec::new()))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Strings(Vec::new()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Strings(Vec::new()))
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Strings(Vec::new()))
            }
        }
        d.deserialize_any(V)
    }
}

/// What a key of `style` (2018) or `details` (2023) describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attr {
    Size,
    Color,
    Other,
}

/// Classifies `"Size:"`, `"Size Name:"`, `"Color:"`, `"Colour"`, ... (case-insensitive).
fn attr_of(key: &str) -> Attr {
    let key = key.trim().trim_end_matches(':').to_ascii_lowercase();
    if key.contains("color") || key.contains("colour") {
        Attr::Color
    } else if key.contains("size") {
        Attr::Size
    } else {
        Attr::Other
    }
}

/// The size and colour of a 2018 `style` object; other keys ("Style:", "Metal Type:") ignored.
#[derive(Default)]
struct Style {
    size: Option<String>,
    color: Option<String>,
}

impl<'de> Deserialize<'de> for Style {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Style;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a style object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut style = Style::default();
                while let Some(CowStr(key)) = map.next_key::<CowStr>()? {
                    let slot = match attr_of(&key) {
                        Attr::Size => &mut style.size,
                        Attr::Color => &mut style.color,
                        Attr::Other => {
                            map.next_value::<IgnoredAny>()?;
                            continue;
                        }
                    };
                    let value = map.next_value::<Strings>()?.0.into_iter().next().unwrap_or_default();
                    if slot.is_none() {
                        *slot = normalize_attr(&value);
                    }
                }
                Ok(style)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Style::default())
            }
        }
        d.deserialize_any(V)
    }
}

/// Sizes and colours of a 2023 `details` object.
#[derive(Default)]
struct Details {
    sizes: Vec<String>,
    colors: Vec<String>,
}

impl<'de> Deserialize<'de> for Details {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Details;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a details object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut details = Details::default();
                while let Some(CowStr(key)) = map.next_key::<CowStr>()? {
                    let list = match attr_of(&key) {
                        Attr::Size => &mut details.sizes,
                        Attr::Color => &mut details.colors,
                        Attr::Other => {
                            map.next_value::<IgnoredAny>()?;
                            continue;
                        }
                    };
                    for value in map.next_value::<Strings>()?.0 {
                        // "Black, Navy" lists several colours in one value.
                        for part in value.split([',', ';']) {
                            if let Some(v) = normalize_attr(part) {
                                if !list.contains(&v) {
                                    list.push(v);
                                }
                            }
                        }
                    }
                }
                Ok(details)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Details::default())
            }
        }
        d.deserialize_any(V)
    }
}

/// Trims a size or colour (2018 values start with a space), collapses inner whitespace and
/// caps its length; `None` when nothing is left.
pub fn normalize_attr(value: &str) -> Option<String> {
    let mut out = collapse_whitespace(&strip_html(value));
    truncate_at_char(&mut out, MAX_ATTR_BYTES);
    (!out.is_empty()).then_some(out)
}

fn collapse_whitespace(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for word in s.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// Removes HTML tags and decodes the common entities (`&amp; &lt; &gt; &quot; &#39; &apos;
/// &nbsp;` and numeric ones), then collapses whitespace. A `<` that does not open a tag stays.
pub fn strip_html(s: &str) -> String {
    if !s.contains(['<', '&']) {
        return collapse_whitespace(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find(['<', '&']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix('<') {
            let opens_tag = after.starts_with(|c: char| c.is_ascii_alphabetic() || c == '/' || c == '!');
            match tail.find('>') {
                Some(end) if opens_tag => {
                    // Block-level tags separate words.
                    out.push(' ');
                    rest = &tail[end + 1..];
                }
                _ => {
                    out.push('<');
                    rest = &tail[1..];
                }
            }
        } else {
            let (decoded, used) = decode_entity(tail);
            out.push_str(decoded.as_deref().unwrap_or("&"));
            rest = &tail[used..];
        }
    }
    out.push_str(rest);
    collapse_whitespace(&out)
}

/// Decodes the entity at the start of `s` (which starts with `&`); returns the text and the
/// bytes used, or `(None, 1)` when it is not a known entity.
fn decode_entity(s: &str) -> (Option<String>, usize) {
    let Some(end) = s[..s.len().min(12)].find(';') else {
        return (None, 1);
    };
    let name = &s[1..end];
    let text = match name {
        "amp" => Some("&".to_string()),
        "lt" => Some("<".to_string()),
        "gt" => Some(">".to_string()),
        "quot" => Some("\"".to_string()),
        "apos" | "#39" => Some("'".to_string()),
        "nbsp" => Some(" ".to_string()),
        _ => {
            let code = match name.strip_prefix("#x").or_else(|| name.strip_prefix("#X")) {
                Some(hex) => u32::from_str_radix(hex, 16).ok(),
                None => name.strip_prefix('#').and_then(|d| d.parse().ok()),
            };
            code.and_then(char::from_u32).map(String::from)
        }
    };
    match text {
        Some(t) => (Some(t), end + 1),
        None => (None, 1),
    }
}

/// A serde_json error as a line-level reason: every line is parsed alone, so "line 1" is noise.
fn reason(e: &serde_json::Error) -> String {
    e.to_string().replace(" at line 1 column ", " at column ")
}

fn required<'a>(value: Cow<'a, str>, field: &str) -> Result<Cow<'a, str>, String> {
    if value.trim().is_empty() {
        Err(format!("empty field `{field}`"))
    } else {
        Ok(value)
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub(crate) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses a 2018 `reviewTime` such as `"02 21, 2017"` or `"01 1, 2018"` (month, day, year)
/// into seconds at midnight UTC.
pub fn parse_review_time(s: &str) -> Option<i64> {
    let (md, year) = s.split_once(',')?;
    let mut md = md.split_whitespace();
    let (month, day) = (md.next()?.parse::<u32>().ok()?, md.next()?.parse::<u32>().ok()?);
    let year = year.trim().parse::<i64>().ok()?;
    ((1..=12).contains(&month) && (1..=31).contains(&day)).then(|| days_from_civil(year, month, day) * 86_400)
}

#[derive(Deserialize)]
struct Review2018<'a> {
    #[serde(rename = "reviewerID", borrow)]
    reviewer_id: Cow<'a, str>,
    #[serde(borrow)]
    asin: Cow<'a, str>,
    #[serde(rename = "unixReviewTime")]
    unix_review_time: Option<i64>,
    #[serde(rename = "reviewTime", borrow)]
    review_time: Option<Cow<'a, str>>,
    overall: Option<f32>,
    verified: Option<bool>,
    #[serde(rename = "reviewText", borrow)]
    review_text: Option<Cow<'a, str>>,
    #[serde(borrow)]
    summary: Option<Cow<'a, str>>,
    style: Option<Style>,
}

/// Parses one line of the 2018 reviews file.
pub fn parse_review_2018(line: &[u8]) -> Result<Review<'_>, String> {
    let r: Review2018 = serde_json::from_slice(line).map_err(|e| reason(&e))?;
    let time = match (r.unix_review_time, &r.review_time) {
        (Some(t), _) => t,
        (None, Some(rt)) => parse_review_time(rt).ok_or_else(|| format!("bad reviewTime {rt:?}"))?,
        (None, None) => return Err("missing field `unixReviewTime`".into()),
    };
    let style = r.style.unwrap_or_default();
    let product_id = required(r.asin, "asin")?;
    Ok(Review {
        user_id: required(r.reviewer_id, "reviewerID")?,
        asin: product_id.clone(),
        product_id,
        time,
        verified: r.verified.unwrap_or(false),
        rating: r.overall.unwrap_or(0.0),
        text: r.review_text.unwrap_or_default(),
        summary: r.summary.unwrap_or_default(),
        size: style.size.map(Cow::Owned),
        color: style.color.map(Cow::Owned),
    })
}

#[derive(Deserialize)]
struct Review2023<'a> {
    #[serde(borrow)]
    user_id: Cow<'a, str>,
    #[serde(borrow)]
    parent_asin: Option<Cow<'a, str>>,
    #[serde(borrow)]
    asin: Option<Cow<'a, str>>,
    timestamp: Option<i64>,
    rating: Option<f32>,
    verified_purchase: Option<bool>,
    #[serde(borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow)]
    title: Option<Cow<'a, str>>,
}

/// Parses one line of the 2023 reviews file (`timestamp` is in milliseconds).
pub fn parse_review_2023(line: &[u8]) -> Result<Review<'_>, String> {
    let r: Review2023 = serde_json::from_slice(line).map_err(|e| reason(&e))?;
    let time = r.timestamp.ok_or("missing field `timestamp`")?.div_euclid(1000);
    let product_id = match (r.parent_asin, &r.asin) {
        (Some(p), _) if !p.trim().is_empty() => p,
        (_, Some(a)) if !a.trim().is_empty() => a.clone(),
        _ => return Err("missing field `parent_asin`".into()),
    };
    Ok(Review {
        user_id: required(r.user_id, "user_id")?,
        asin: r.asin.unwrap_or_else(|| product_id.clone()),
        product_id,
        time,
        verified: r.verified_purchase.unwrap_or(false),
        rating: r.rating.unwrap_or(0.0),
        text: r.text.unwrap_or_default(),
        summary: r.title.unwrap_or_default(),
        size: None,
        color: None,
    })
}

#[derive(Deserialize)]
struct Meta2018<'a> {
    #[serde(borrow)]
    asin: Cow<'a, str>,
    #[serde(borrow)]
    title: Option<Cow<'a, str>>,
    #[serde(borrow)]
    brand: Option<Cow<'a, str>>,
}

/// Parses one line of the 2018 metadata file.
pub fn parse_meta_2018(line: &[u8]) -> Result<Meta, String> {
    let m: Meta2018 = serde_json::from_slice(line).map_err(|e| reason(&e))?;
    Ok(Meta {
        product_id: required(m.asin, "asin")?.trim().to_string(),
        title: clean_title(m.title.as_deref()),
        brand: m.brand.as_deref().map(strip_html).unwrap_or_default(),
        sizes: Vec::new(),
        colors: Vec::new(),
    })
}

#[derive(Deserialize)]
struct Meta2023<'a> {
    #[serde(borrow)]
    parent_asin: Cow<'a, str>,
    #[serde(borrow)]
    title: Option<Cow<'a, str>>,
    #[serde(borrow)]
    store: Option<Cow<'a, str>>,
    details: Option<Details>,
}

/// Parses one line of the 2023 metadata file.
pub fn parse_meta_2023(line: &[u8]) -> Result<Meta, String> {
    let m: Meta2023 = serde_json::from_slice(line).map_err(|e| reason(&e))?;
    let details = m.details.unwrap_or_default();
    Ok(Meta {
        product_id: required(m.parent_asin, "parent_asin")?.trim().to_string(),
        title: clean_title(m.title.as_deref()),
        brand: m.store.as_deref().map(strip_html).unwrap_or_default(),
        sizes: details.sizes,
        colors: details.colors,
    })
}

fn clean_title(title: Option<&str>) -> String {
    let mut t = title.map(strip_html).unwrap_or_default();
    truncate_at_char(&mut t, MAX_TITLE_BYTES);
    t
}

/// A span of a [`ReviewBatch`] arena.
#[derive(Debug, Clone, Copy, Default)]
struct Span {
    start: u32,
    len: u32,
}

#[derive(Debug, Clone, Copy)]
struct Rec {
    user: Span,
    product: Span,
    /// Empty when equal to the product id.
    asin: Span,
    text: Span,
    summary: Span,
    size: Span,
    color: Span,
    time: i64,
    rating: f32,
    verified: bool,
}

/// Reviews of one batch of lines, stored compactly: all strings in one arena.
#[derive(Debug, Default)]
pub struct ReviewBatch {
    arena: String,
    recs: Vec<Rec>,
    /// Lines parsed into a review.
    read: u64,
    /// Reviews dropped by the verified filter.
    unverified: u64,
}

impl ReviewBatch {
    fn put(&mut self, s: &str) -> Span {
        let start = u32::try_from(self.arena.len()).unwrap_or(u32::MAX);
        self.arena.push_str(s);
        Span { start, len: u32::try_from(s.len()).unwrap_or(0) }
    }

    fn span(&self, s: Span) -> &str {
        let (a, b) = (s.start as usize, s.start as usize + s.len as usize);
        self.arena.get(a..b).unwrap_or("")
    }

    /// Stores a copy of `r`.
    pub fn push(&mut self, r: &Review) {
        let asin = if r.asin == r.product_id { Span::default() } else { self.put(&r.asin) };
        let rec = Rec {
            user: self.put(&r.user_id),
            product: self.put(&r.product_id),
            asin,
            text: self.put(&r.text),
            summary: self.put(&r.summary),
            size: self.put(r.size.as_deref().unwrap_or("")),
            color: self.put(r.color.as_deref().unwrap_or("")),
            time: r.time,
            rating: r.rating,
            verified: r.verified,
        };
        self.recs.push(rec);
    }

    /// Reviews stored.
    pub fn len(&self) -> usize {
        self.recs.len()
    }

    /// No review stored.
    pub fn is_empty(&self) -> bool {
        self.recs.is_empty()
    }

    /// The `i`-th review stored.
    pub fn get(&self, i: usize) -> Review<'_> {
        let r = &self.recs[i];
        let opt = |s: Span| (s.len > 0).then(|| Cow::Borrowed(self.span(s)));
        let product_id = Cow::Borrowed(self.span(r.product));
        Review {
            user_id: Cow::Borrowed(self.span(r.user)),
            asin: opt(r.asin).unwrap_or_else(|| product_id.clone()),
            product_id,
            time: r.time,
            verified: r.verified,
            rating: r.rating,
            text: Cow::Borrowed(self.span(r.text)),
            summary: Cow::Borrowed(self.span(r.summary)),
            size: opt(r.size),
            color: opt(r.color),
        }
    }

    /// The user id of the `i`-th review (cheaper than [`ReviewBatch::get`]).
    pub fn user_id(&self, i: usize) -> &str {
        self.span(self.recs[i].user)
    }

    /// The product id of the `i`-th review.
    pub fn product_id(&self, i: usize) -> &str {
        self.span(self.recs[i].product)
    }

    /// Text and summary of the `i`-th review.
    pub fn texts(&self, i: usize) -> [&str; 2] {
        let r = &self.recs[i];
        [self.span(r.text), self.span(r.summary)]
    }

    /// Size and colour of the `i`-th review.
    pub fn style(&self, i: usize) -> (Option<&str>, Option<&str>) {
        let r = &self.recs[i];
        let opt = |s: Span| (s.len > 0).then(|| self.span(s));
        (opt(r.size), opt(r.color))
    }

    /// The time of the `i`-th review, in seconds.
    pub fn time(&self, i: usize) -> i64 {
        self.recs[i].time
    }
}

/// All reviews of a file.
#[derive(Debug)]
pub(crate) struct ReviewsRead {
    pub format: Format,
    pub batches: Vec<ReviewBatch>,
    pub lines: u64,
    pub reviews_read: u64,
    pub unverified: u64,
    pub bad_lines: u64,
    pub examples: Vec<String>,
}

/// Reads a reviews file of either release (told apart by its first line).
pub(crate) fn read_reviews(path: &Path, opts: &ReadOptions, progress: &Progress) -> Result<ReviewsRead, DataError> {
    let first = read::first_line(path)?;
    let format =
        Format::of_review_line(&first).ok_or_else(|| DataError::UnknownFormat { path: path.display().to_string() })?;
    let parse: fn(&[u8]) -> Result<Review<'_>, String> = match format {
        Format::Amazon2018 => parse_review_2018,
        Format::Amazon2023 => parse_review_2023,
    };
    let bar = progress.bytes(file_len(path), "reading reviews".into());
    let verified_only = opts.verified_only;
    let lines = read::parse_lines(path, opts.skip_bad_lines, bar.clone(), |batch: &mut ReviewBatch, line| {
        let review = parse(line)?;
        batch.read += 1;
        if verified_only && !review.verified {
            batch.unverified += 1;
        } else {
            batch.push(&review);
        }
        Ok(())
    })?;
    bar.finish();
    Ok(ReviewsRead {
        format,
        reviews_read: lines.batches.iter().map(|b| b.read).sum(),
        unverified: lines.batches.iter().map(|b| b.unverified).sum(),
        batches: lines.batches,
        lines: lines.lines,
        bad_lines: lines.bad_lines,
        examples: lines.examples,
    })
}

/// Product metadata by product id (the first line of a duplicated id wins).
#[derive(Debug, Default)]
pub(crate) struct MetaTable {
    pub by_id: FastMap<String, Meta>,
    pub lines: u64,
    pub duplicates: u64,
    pub bad_lines: u64,
    pub examples: Vec<String>,
}

/// Reads a metadata file of either release.
pub(crate) fn read_meta(path: &Path, opts: &ReadOptions, progress: &Progress) -> Result<MetaTable, DataError> {
    let first = read::first_line(path)?;
    let format =
        Format::of_meta_line(&first).ok_or_else(|| DataError::UnknownFormat { path: path.display().to_string() })?;
    let parse: fn(&[u8]) -> Result<Meta, String> = match format {
        Format::Amazon2018 => parse_meta_2018,
        Format::Amazon2023 => parse_meta_2023,
    };
    let bar = progress.bytes(file_len(path), "reading metadata".into());
    let lines = read::parse_lines(path, opts.skip_bad_lines, bar.clone(), |batch: &mut Vec<Meta>, line| {
        batch.push(parse(line)?);
        Ok(())
    })?;
    bar.finish();
    let mut table =
        MetaTable { lines: lines.lines, bad_lines: lines.bad_lines, examples: lines.examples, ..MetaTable::default() };
    for meta in lines.batches.into_iter().flatten() {
        if table.by_id.contains_key(&meta.product_id) {
            table.duplicates += 1;
        } else {
            table.by_id.insert(meta.product_id.clone(), meta);
        }
    }
    Ok(table)
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Lines in the exact layout of the real files (Python `json.dumps`: ", " and ": "
    // separators, non-ASCII as \u escapes, floats as 5.0).
    const R2018_PLAIN: &str = r#"{"overall": 5.0, "verified": true, "reviewTime": "10 20, 2014", "reviewerID": "A1D4G1SNUZWQOT", "asin": "7106116521", "reviewerName": "Tracy", "reviewText": "Exactly what I needed.", "summary": "perfect replacements!!", "unixReviewTime": 1413763200}"#;
    const R2018_STYLE: &str = r#"{"overall": 2.0, "vote": "3", "verified": true, "reviewTime": "09 28, 2014", "reviewerID": "A3DDWDH9PX2YX2", "asin": "B00007GDFV", "style": {"Size:": " Big Boys", "Color:": " Blue/Orange"}, "reviewerName": "Tiffany Mitchell", "reviewText": "They\u2019re \"cute\" but\nthe sole split.", "summary": "Two Stars", "unixReviewTime": 1411862400, "image": ["https://images-na.ssl-images-amazon.com/images/I/71eG75FTJJL._SY88.jpg"]}"#;
    const R2018_VOTE: &str = r#"{"overall": 4.0, "vote": "1,234", "verified": false, "reviewTime": "01 1, 2018", "reviewerID": "AUI6WTTT0QZYS", "asin": "5120053084", "style": {"Size Name:": " Large", "Color Name:": " Charcoal", "Style:": " Classic"}, "reviewerName": "Abbey", "reviewText": "I now have 4 of the 5 available colors of this shirt.", "unixReviewTime": 1514764800}"#;
    const R2018_NO_TIME: &str = r#"{"overall": 3.0, "verified": true, "reviewTime": "02 21, 2017", "reviewerID": "A2IC3NZN488KWK", "asin": "B00ABC1234", "summary": "Three Stars"}"#;
    const R2023: &str = r#"{"rating": 5.0, "title": "Pretty locket", "text": "I think this locket is really pretty. The inside back is a solid surface.", "images": [{"small_image_url": "https://m.media-amazon.com/images/I/71yl+ftBCSL._SL256_.jpg", "medium_image_url": "https://m.media-amazon.com/images/I/71yl+ftBCSL._SL800_.jpg", "large_image_url": "https://m.media-amazon.com/images/I/71yl+ftBCSL._SL1600_.jpg", "attachment_type": "IMAGE"}], "asin": "B00LOPVX74", "parent_asin": "B00LOPVX7K", "user_id": "AGBFYI2DDIKXC5Y4FARTYDTQBMFQ", "timestamp": 1578528394489, "helpful_vote": 3, "verified_purchase": true}"#;
    const M2018: &str = r#"{"title": "Slime Time Fall Fest [With CDROM and Collector Cards and Neutron Balls, Incredi-Ball and Glow Stick Necklace, Paper Fram and Sticky Sp", "brand": "Group Publishing (CO)", "feature": ["Product Dimensions:\n                    \n8.7 x 3.6 x 10.8 inches\n                    \n", "Shipping Weight:\n                    \n2.4 pounds (View shipping rates and policies)\n                    \n"], "rank": "13,052,976inClothing,Shoesamp;Jewelry(", "date": "8.70 inches", "asin": "0764443682", "imageURL": ["https://images-na.ssl-images-amazon.com/images/I/51bSrINiWpL._US40_.jpg"], "imageURLHighRes": ["https://images-na.ssl-images-amazon.com/images/I/51bSrINiWpL.jpg"]}"#;
    const M2018_HTML: &str = r##"{"category": ["Clothing, Shoes & Jewelry", "Men", "Clothing", "Jeans"], "tech1": "", "description": ["<b>Classic</b> five-pocket jeans &amp; more<br>Machine wash"], "fit": "", "title": "Levi&#39;s Men&apos;s 505 Regular Fit Jeans &amp; Belt", "also_buy": ["B00XAB1234"], "tech2": "", "brand": "Levi&#39;s", "feature": [], "rank": ["#1,234 in Clothing"], "also_view": [], "main_cat": "<img src=\"https://images-na.ssl-images-amazon.com/images/G/01/nav2/images/gui/amazon-fashion-store-new._CB520838675_.png\" class=\"nav-categ-image\" alt=\"AMAZON FASHION\"/>", "similar_item": "", "date": "", "price": "$39.99", "asin": "B00XYZ0001", "imageURL": [], "imageURLHighRes": [], "details": {"\n    Product Dimensions: \n    ": "10 x 8 x 2 inches ; 8 ounces", "Shipping Weight:": "8 ounces"}}"##;
    const M2023: &str = r#"{"main_category": "AMAZON FASHION", "title": "YUEDGE 5 Pairs Men's Moisture Control Cushioned Dry Fit Casual Athletic Crew Socks for Men (Blue, Size 9-12)", "average_rating": 4.6, "rating_number": 16, "features": [], "description": [], "price": null, "images": [{"thumb": "https://m.media-amazon.com/images/I/41+cCfaVOFS._AC_SR38,50_.jpg", "large": "https://m.media-amazon.com/images/I/41+cCfaVOFS._AC_.jpg", "variant": "MAIN", "hi_res": null}], "videos": [], "store": "GiveGift Boutique", "categories": [], "details": {"Package Dimensions": "10.31 x 8.5 x 1.73 inches; 5.29 Ounces", "Item model number": "YUEDGE-M5-Blue-XL", "Date First Available": "March 7, 2019", "Size": ["9-12", "12-15"], "Color": "Blue, Black", "Best Sellers Rank": {"Clothing, Shoes & Jewelry": 1234}}, "parent_asin": "B08BHN9PK5", "bought_together": null}"#;

    fn ok<T>(r: Result<T, String>) -> T {
        r.unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn parses_2018_reviews_with_their_quirks() {
        let r = ok(parse_review_2018(R2018_PLAIN.as_bytes()));
        assert_eq!((r.user_id.as_ref(), r.product_id.as_ref()), ("A1D4G1SNUZWQOT", "7106116521"));
        assert_eq!((r.time, r.verified, r.rating), (1_413_763_200, true, 5.0));
        assert_eq!((r.text.as_ref(), r.summary.as_ref()), ("Exactly what I needed.", "perfect replacements!!"));
        assert_eq!((r.size, r.color), (None, None));
        assert!(matches!(r.user_id, Cow::Borrowed(_)), "unescaped strings are borrowed");

        let r = ok(parse_review_2018(R2018_STYLE.as_bytes()));
        assert_eq!(r.size.as_deref(), Some("Big Boys"));
        assert_eq!(r.color.as_deref(), Some("Blue/Orange"));
        assert_eq!(r.text, "They\u{2019}re \"cute\" but\nthe sole split.");
        assert_eq!(r.rating, 2.0);

        let r = ok(parse_review_2018(R2018_VOTE.as_bytes()));
        assert_eq!((r.size.as_deref(), r.color.as_deref()), (Some("Large"), Some("Charcoal")));
        assert!(!r.verified && r.summary.is_empty());

        // No unixReviewTime: reviewTime (month, unpadded day, year) is used.
        let r = ok(parse_review_2018(R2018_NO_TIME.as_bytes()));
        assert_eq!(r.time, 1_487_635_200);
        assert!(r.text.is_empty());
    }

    #[test]
    fn refuses_2018_lines_without_required_fields() {
        let no_user = R2018_PLAIN.replace(r#""reviewerID": "A1D4G1SNUZWQOT", "#, "");
        let e = parse_review_2018(no_user.as_bytes()).err().unwrap_or_default();
        assert!(e.starts_with("missing field `reviewerID` at column "), "{e}");
        let no_time = R2018_NO_TIME.replace(r#""reviewTime": "02 21, 2017", "#, "");
        assert_eq!(parse_review_2018(no_time.as_bytes()).err().as_deref(), Some("missing field `unixReviewTime`"));
        let empty_asin = R2018_PLAIN.replace("7106116521", " ");
        assert_eq!(parse_review_2018(empty_asin.as_bytes()).err().as_deref(), Some("empty field `asin`"));
        assert_eq!(parse_review_2018(b"<html>").err().as_deref(), Some("expected value at column 1"));
        let cut = &R2018_PLAIN.as_bytes()[..40];
        assert!(parse_review_2018(cut).err().unwrap_or_default().starts_with("EOF while parsing"));
    }

    #[test]
    fn parses_2023_reviews() {
        let r = ok(parse_review_2023(R2023.as_bytes()));
        assert_eq!((r.user_id.as_ref(), r.product_id.as_ref()), ("AGBFYI2DDIKXC5Y4FARTYDTQBMFQ", "B00LOPVX7K"));
        assert_eq!(r.asin, "B00LOPVX74");
        assert_eq!(r.time, 1_578_528_394, "milliseconds become seconds");
        assert!(r.verified && r.rating == 5.0);
        assert_eq!(r.summary, "Pretty locket");
        assert!(r.text.starts_with("I think this locket"));
        let no_ts = R2023.replace(r#""timestamp": 1578528394489, "#, "");
        assert_eq!(parse_review_2023(no_ts.as_bytes()).err().as_deref(), Some("missing field `timestamp`"));
    }

    #[test]
    fn parses_meta_of_both_releases() {
        let m = ok(parse_meta_2018(M2018.as_bytes()));
        assert_eq!(m.product_id, "0764443682");
        assert!(m.title.starts_with("Slime Time Fall Fest"));
        assert_eq!(m.brand, "Group Publishing (CO)");

        let m = ok(parse_meta_2018(M2018_HTML.as_bytes()));
        assert_eq!(m.title, "Levi's Men's 505 Regular Fit Jeans & Belt");
        assert_eq!(m.brand, "Levi's");

        let m = ok(parse_meta_2023(M2023.as_bytes()));
        assert_eq!(m.product_id, "B08BHN9PK5");
        assert_eq!(m.brand, "GiveGift Boutique");
        assert_eq!(m.sizes, vec!["9-12", "12-15"]);
        assert_eq!(m.colors, vec!["Blue", "Black"]);
    }

    #[test]
    fn tells_the_releases_apart() {
        assert_eq!(Format::of_review_line(R2018_PLAIN.as_bytes()), Some(Format::Amazon2018));
        assert_eq!(Format::of_review_line(R2023.as_bytes()), Some(Format::Amazon2023));
        assert_eq!(Format::of_meta_line(M2018.as_bytes()), Some(Format::Amazon2018));
        assert_eq!(Format::of_meta_line(M2023.as_bytes()), Some(Format::Amazon2023));
        assert_eq!(Format::of_review_line(b"{\"a\": 1}"), None);
        assert_eq!(Format::Amazon2023.to_string(), "amazon-2023");
    }

    #[test]
    fn strips_html_and_decodes_entities() {
        assert_eq!(strip_html("<b>Classic</b> fit &amp; <i>feel</i>"), "Classic fit & feel");
        assert_eq!(strip_html("a<br>b<br/>c"), "a b c");
        assert_eq!(strip_html("&lt;3 &quot;soft&quot; &#39;n&#39; &nbsp;warm&#x21;"), "<3 \"soft\" 'n' warm!");
        assert_eq!(strip_html("5 < 6 & 7 > 3 &bogus;"), "5 < 6 & 7 > 3 &bogus;");
        assert_eq!(strip_html("  many \n  spaces "), "many spaces");
        assert_eq!(strip_html("<p>unterminated <b"), "unterminated <b");
    }

    #[test]
    fn batch_round_trips_reviews() {
        let mut batch = ReviewBatch::default();
        let a = ok(parse_review_2018(R2018_STYLE.as_bytes()));
        let b = ok(parse_review_2023(R2023.as_bytes()));
        batch.push(&a);
        batch.push(&b);
        assert_eq!(batch.len(), 2);
        assert_eq!(batch.get(0), a);
        assert_eq!(batch.get(1), b);
        assert_eq!(
            (batch.user_id(1), batch.product_id(1), batch.time(1)),
            ("AGBFYI2DDIKXC5Y4FARTYDTQBMFQ", "B00LOPVX7K", 1_578_528_394)
        );
    }

    #[test]
    fn review_time_parses_padded_and_unpadded_days() {
        assert_eq!(parse_review_time("01 1, 2018"), Some(1_514_764_800));
        assert_eq!(parse_review_time("02 21, 2017"), Some(1_487_635_200));
        assert_eq!(parse_review_time("13 1, 2018"), None);
        assert_eq!(parse_review_time("yesterday"), None);
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
    }
}
