//! Checks the codec against the hex test vectors in spec/vectors/ (format: spec/vectors/README.md).
//!
//! The JSON files are the source of truth, shared with implementations in other languages. Valid vectors
//! are checked in both directions (decode(hex) == frames, and encode(frames) == hex unless the vector is
//! marked non-canonical), whole and byte by byte; invalid vectors must fail with the named error and code.

#[path = "support/frame_json.rs"]
mod frame_json;

use std::collections::BTreeSet;

use ferry_protocol::codec::{
    decode_all, decode_datagram, encode, encode_datagram, DEFAULT_MAX_FRAME_SIZE,
};
use ferry_protocol::{DecodeError, Decoder, Frame};
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ValidVector {
    name: String,
    description: String,
    hex: String,
    max_frame_size: Option<usize>,
    #[serde(default = "canonical_by_default")]
    canonical: bool,
    frames: Vec<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InvalidVector {
    name: String,
    description: String,
    hex: String,
    max_frame_size: Option<usize>,
    error: String,
    code: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DatagramVector {
    name: String,
    description: String,
    hex: String,
    frame: Value,
}

fn canonical_by_default() -> bool {
    true
}

fn read(file: &str) -> String {
    let path = format!("{}/../spec/vectors/{file}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn load<T: for<'de> Deserialize<'de>>(file: &str) -> Vec<T> {
    let text = read(file);
    check_json_numbers(file, &serde_json::from_str(&text).expect(file));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// Numbers must survive JSON parsers that read them as doubles (JavaScript), so they stay below 2^53.
fn check_json_numbers(path: &str, value: &Value) {
    match value {
        Value::Number(n) => assert!(
            n.as_u64().is_some_and(|n| n < 1 << 53)
                || n.as_i64().is_some_and(|n| n.unsigned_abs() < 1 << 53),
            "{path}: {n} is not an integer below 2^53"
        ),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .for_each(|(i, v)| check_json_numbers(&format!("{path}[{i}]"), v)),
        Value::Object(map) => map
            .iter()
            .for_each(|(k, v)| check_json_numbers(&format!("{path}.{k}"), v)),
        _ => {}
    }
}

fn unhex(name: &str, hex: &str) -> Vec<u8> {
    hex::decode(hex).unwrap_or_else(|e| panic!("{name}: bad hex: {e}"))
}

/// Feeds one byte at a time, as a stream that trickles in, and returns what came out.
fn decode_byte_by_byte(bytes: &[u8], max: usize) -> Result<Vec<Frame>, DecodeError> {
    let mut decoder = Decoder::new(max);
    let mut frames = Vec::new();
    for byte in bytes {
        decoder.extend(std::slice::from_ref(byte));
        while let Some(frame) = decoder.next_frame()? {
            frames.push(frame);
        }
    }
    decoder.finish()?;
    Ok(frames)
}

fn assert_unique_names<'a>(file: &str, names: impl Iterator<Item = &'a str>) {
    let mut seen = BTreeSet::new();
    for name in names {
        assert!(seen.insert(name), "{file}: duplicate vector name {name:?}");
    }
}

#[test]
fn valid_vectors_decode_and_encode() {
    let vectors: Vec<ValidVector> = load("frames.json");
    assert_unique_names("frames.json", vectors.iter().map(|v| v.name.as_str()));
    let mut missing_hex = Vec::new();
    for v in &vectors {
        assert!(!v.description.is_empty(), "{}: no description", v.name);
        let expected: Vec<Frame> = v
            .frames
            .iter()
            .enumerate()
            .map(|(i, f)| frame_json::from_json(&format!("{}.frames[{i}]", v.name), f))
            .collect();
        let encoded: Vec<u8> = expected.iter().flat_map(|f| encode(f).to_vec()).collect();
        if v.hex.is_empty() {
            // Authoring aid: a new canonical vector may leave `hex` empty to be told its encoding.
            missing_hex.push(format!("{}: {}", v.name, hex::encode(&encoded)));
            continue;
        }
        // Vectors list exactly the non-default fields, so implementations can compare JSON directly.
        let normalized: Vec<Value> = expected.iter().map(frame_json::to_json).collect();
        assert_eq!(
            normalized, v.frames,
            "{}: frames not in normal form",
            v.name
        );
        let bytes = unhex(&v.name, &v.hex);
        let max = v.max_frame_size.unwrap_or(DEFAULT_MAX_FRAME_SIZE);
        assert_eq!(decode_all(&bytes, max), Ok(expected.clone()), "{}", v.name);
        assert_eq!(
            decode_byte_by_byte(&bytes, max),
            Ok(expected),
            "{} (byte by byte)",
            v.name
        );
        if v.canonical {
            assert_eq!(hex::encode(&encoded), v.hex, "{}: encoding differs", v.name);
        } else {
            assert_ne!(encoded, bytes, "{}: marked non-canonical but is", v.name);
        }
    }
    assert!(
        missing_hex.is_empty(),
        "vectors without hex:\n{}",
        missing_hex.join("\n")
    );
}

#[test]
fn every_frame_kind_has_a_vector() {
    let vectors: Vec<ValidVector> = load("frames.json");
    let covered: BTreeSet<&str> = vectors
        .iter()
        .flat_map(|v| &v.frames)
        .filter_map(|f| f["kind"].as_str())
        .collect();
    let missing: Vec<_> = proto_frame_kinds()
        .into_iter()
        .filter(|kind| !covered.contains(kind.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "frame kinds without a vector: {missing:?}"
    );
}

/// The names in `oneof kind` of `Frame` in spec/ferry.proto, so a new frame kind without a vector (or
/// without JSON support in the helper) fails here.
fn proto_frame_kinds() -> Vec<String> {
    let proto =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../spec/ferry.proto"))
            .expect("spec/ferry.proto");
    let oneof = proto
        .split_once("oneof kind {")
        .and_then(|(_, rest)| rest.split_once('}'))
        .expect("Frame has a `oneof kind`")
        .0;
    oneof
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with("//"))
        .map(|line| {
            // `Type name = N;`
            let words: Vec<_> = line.split_whitespace().collect();
            assert_eq!(words.get(2), Some(&"="), "unexpected line in oneof: {line}");
            words[1].to_owned()
        })
        .collect()
}

#[test]
fn json_helper_knows_every_proto_frame_kind() {
    for kind in proto_frame_kinds() {
        let frame = frame_json::from_json(&kind, &serde_json::json!({ "kind": kind }));
        assert_eq!(frame_json::to_json(&frame)["kind"], kind.as_str());
    }
}

#[test]
fn invalid_vectors_fail_with_their_error_and_code() {
    let vectors: Vec<InvalidVector> = load("invalid.json");
    assert_unique_names("invalid.json", vectors.iter().map(|v| v.name.as_str()));
    for v in &vectors {
        assert!(!v.description.is_empty(), "{}: no description", v.name);
        let bytes = unhex(&v.name, &v.hex);
        let max = v.max_frame_size.unwrap_or(DEFAULT_MAX_FRAME_SIZE);
        for (how, result) in [
            ("whole", decode_all(&bytes, max)),
            ("byte by byte", decode_byte_by_byte(&bytes, max)),
        ] {
            let err = result.expect_err(&format!("{} ({how}) must fail", v.name));
            assert_eq!(err.name(), v.error, "{} ({how}): {err}", v.name);
            assert_eq!(err.code().0, v.code, "{} ({how}): {err}", v.name);
        }
    }
}

#[test]
fn invalid_vectors_cover_every_decode_error() {
    let vectors: Vec<InvalidVector> = load("invalid.json");
    let covered: BTreeSet<&str> = vectors.iter().map(|v| v.error.as_str()).collect();
    let all = [
        "truncated",
        "frame_too_large",
        "bad_varint",
        "malformed",
        "unknown_frame",
    ];
    assert_eq!(covered, BTreeSet::from(all));
}

#[test]
fn datagram_vectors_decode_and_encode() {
    let vectors: Vec<DatagramVector> = load("datagrams.json");
    assert_unique_names("datagrams.json", vectors.iter().map(|v| v.name.as_str()));
    let mut missing_hex = Vec::new();
    for v in &vectors {
        assert!(!v.description.is_empty(), "{}: no description", v.name);
        let expected = frame_json::from_json(&v.name, &v.frame);
        assert_eq!(
            frame_json::to_json(&expected),
            v.frame,
            "{}: not in normal form",
            v.name
        );
        let encoded = hex::encode(encode_datagram(&expected));
        if v.hex.is_empty() {
            missing_hex.push(format!("{}: {encoded}", v.name));
            continue;
        }
        assert_eq!(encoded, v.hex, "{}: encoding differs", v.name);
        let bytes = unhex(&v.name, &v.hex);
        assert_eq!(
            decode_datagram(&bytes, DEFAULT_MAX_FRAME_SIZE),
            Ok(expected),
            "{}",
            v.name
        );
    }
    assert!(
        missing_hex.is_empty(),
        "vectors without hex:\n{}",
        missing_hex.join("\n")
    );
}
