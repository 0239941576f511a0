//! Tests for the hl7v2 module: parsing and locations, escapes, MLLP framing,
//! ACKs, and no-panic / linear-time checks on hostile input.

use std::time::{Duration, Instant};

use super::*;

/// Tiny deterministic LCG (Knuth MMIX constants); no crates allowed.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn parse(text: &str) -> Message {
    match Message::parse(text) {
        Ok(m) => m,
        Err(e) => panic!("parse failed: {e}"),
    }
}

fn sample_segments() -> Vec<String> {
    let mut pid = vec![""; 30];
    pid[0] = "PID";
    pid[1] = "1";
    pid[3] = "K1234567^^^RJZ^MR~9434765919^^^NHS^NH";
    pid[5] = "SMITH^ANNE^M^^MRS";
    pid[7] = "19380305";
    pid[8] = "F";
    pid[11] = r"14 HAYES LANE\T\FLAT 2^^BROMLEY^^BR2 9EA^GBR^H";
    pid[13] = r"020 7946 0000\F\EVENINGS";
    pid[29] = "\"\"";
    let mut pv1 = vec![""; 45];
    pv1[0] = "PV1";
    pv1[1] = "1";
    pv1[2] = "E";
    pv1[3] = "RJZ01^BAY 1^BED 4^RJZ";
    pv1[7] = "C1234567^WHO^JOHN^^^DR";
    pv1[19] = "V000123456^^^RJZ^VN";
    pv1[44] = "202403310130";
    vec![
        r"MSH|^~\&|PAS|RJZ|GATEWAY|X26|20240331013512||ADT^A01|MSG0000123|P|2.4|||AL|NE|GBR".into(),
        "EVN|A01|20240331013500".into(),
        pid.join("|"),
        "PD1|||BROMLEY GP^^G85004".into(),
        pv1.join("|"),
        r"ZU1|1|LINE ONE\X0D0A\LINE TWO|FIRST\.br\SECOND|ODD\Q\VALUE|\H\BOLD\N\ TEXT|A&B\T\C&D"
            .into(),
    ]
}

fn sample(sep: &str) -> String {
    let mut s = sample_segments().join(sep);
    s.push_str(sep);
    s
}

fn get(m: &Message, loc: &str) -> Option<String> {
    m.get(loc)
}

#[test]
fn nhs_adt_a01_locations() {
    let m = parse(&sample("\r"));
    let expect = [
        ("MSH-1", "|"),
        ("MSH-2", r"^~\&"),
        ("MSH-3", "PAS"),
        ("MSH-6", "X26"),
        ("MSH-9", "ADT"),
        ("MSH-9.2", "A01"),
        ("MSH-10", "MSG0000123"),
        ("MSH-12", "2.4"),
        ("EVN-1", "A01"),
        ("PID-1", "1"),
        ("PID-3", "K1234567"),
        ("PID-3[1].4", "RJZ"),
        ("PID-3[2].1", "9434765919"),
        ("PID-3[2].5", "NH"),
        ("PID-5", "SMITH"),
        ("PID-5.2", "ANNE"),
        ("PID-5.5", "MRS"),
        ("PID-7", "19380305"),
        ("PID-11.1", "14 HAYES LANE&FLAT 2"),
        ("PID-11.1.1", "14 HAYES LANE&FLAT 2"),
        ("PID-11.5", "BR2 9EA"),
        ("PID-13", "020 7946 0000|EVENINGS"),
        ("PV1-2", "E"),
        ("PV1-3.2", "BAY 1"),
        ("PV1-19", "V000123456"),
        ("PV1-19.5", "VN"),
        ("PV1-44", "202403310130"),
        ("ZU1-2", "LINE ONE\r\nLINE TWO"),
        ("ZU1-3", "FIRST\nSECOND"),
        ("ZU1-4", r"ODD\Q\VALUE"),
        ("ZU1-5", "BOLD TEXT"),
        ("ZU1-6.1.1", "A"),
        ("ZU1-6.1.2", "B&C"),
        ("ZU1-6.1.3", "D"),
    ];
    for (loc, want) in expect {
        assert_eq!(get(&m, loc).as_deref(), Some(want), "{loc}");
    }
    for absent in [
        "PID-2",
        "PID-3[3].1",
        "PID-3[2].6",
        "PID-29",
        "PID-30",
        "PV1-45",
        "ZU1-6.1.4",
        "OBX-1",
        "PID-0",
        "PID-3[0]",
        "PID-3.0",
        "pid-3",
        "PID-3.",
        "PID-3[2",
        "PID-+3",
        "PID-3x",
        "PID",
        "PID-99999999999999999999999",
    ] {
        assert_eq!(get(&m, absent), None, "{absent}");
    }
    assert_eq!(m.message_type(), Some(("ADT".to_owned(), "A01".to_owned())));
    assert_eq!(m.control_id().as_deref(), Some("MSG0000123"));
    assert_eq!(m.version().as_deref(), Some("2.4"));
}

#[test]
fn structure_accessors() {
    let m = parse(&sample("\r"));
    let ids: Vec<&str> = m.segments().map(|s| s.id()).collect();
    assert_eq!(ids, ["MSH", "EVN", "PID", "PD1", "PV1", "ZU1"]);
    let Some(pid) = m.segment("PID") else {
        panic!("no PID")
    };
    assert_eq!(pid.index(), 2);
    assert_eq!(pid.field_count(), 29);
    let Some(null) = pid.field(29) else {
        panic!("PID-29 missing")
    };
    assert!(null.is_null());
    assert_eq!(null.raw(), "\"\"");
    assert!(pid.field(2).is_none(), "empty field is absent");
    let Some(ids3) = pid.field(3) else {
        panic!("PID-3")
    };
    assert!(!ids3.is_null());
    let reps: Vec<String> = ids3.repetitions().map(|r| r.value().into_owned()).collect();
    assert_eq!(reps, ["K1234567", "9434765919"]);
    let nhs = ids3
        .repetitions()
        .find(|r| r.component(5).map(|c| c.raw()) == Some("NH"));
    assert_eq!(nhs.map(|r| r.raw()), Some("9434765919^^^NHS^NH"));
    let Some(msh) = m.segment("MSH") else {
        panic!("no MSH")
    };
    // MSH counts MSH-1 and MSH-2, so the last field (GBR) is MSH-17.
    assert_eq!(msh.field_count(), 17);
    assert_eq!(msh.field(17).map(|f| f.raw()), Some("GBR"));
    let Some(enc) = msh.field(2) else {
        panic!("MSH-2")
    };
    assert_eq!(enc.repetitions().count(), 1, "MSH-2 is never split");
    assert_eq!(
        enc.repetition(1).map(|r| r.value()).as_deref(),
        Some(r"^~\&")
    );
    assert_eq!(msh.field(3).map(|f| f.raw()), Some("PAS"));
    assert_eq!(m.segments_named("PID").count(), 1);
    assert_eq!(
        m.segments_named("ZU1")
            .map(|s| s.index())
            .collect::<Vec<_>>(),
        [5]
    );
    assert!(m.segment("OBX").is_none());
    let Some(zu1) = m.segment("ZU1") else {
        panic!("ZU1")
    };
    let subs: Vec<&str> = zu1
        .field(6)
        .and_then(|f| f.repetition(1))
        .and_then(|r| r.component(1))
        .map(|c| c.subcomponents().collect())
        .unwrap_or_default();
    assert_eq!(subs, ["A", r"B\T\C", "D"]);
}

#[test]
fn line_endings_bom_and_blank_lines_parse_identically() {
    let shape = |m: &Message| -> Vec<Vec<String>> {
        m.segments()
            .map(|s| {
                (1..=s.field_count())
                    .map(|n| s.field(n).map(|f| f.raw().to_owned()).unwrap_or_default())
                    .collect()
            })
            .collect()
    };
    let reference = shape(&parse(&sample("\r")));
    assert_eq!(reference.len(), 6);
    let variants = [
        sample("\n"),
        sample("\r\n"),
        format!("\u{feff}\r\n \n{}", sample("\r\n\r\n")),
        sample_segments().join("\n"),
    ];
    for text in &variants {
        let m = parse(text);
        assert_eq!(shape(&m), reference, "{text:?}");
        assert_eq!(m.get("PV1-44").as_deref(), Some("202403310130"));
        assert_eq!(m.get("ZU1-2").as_deref(), Some("LINE ONE\r\nLINE TWO"));
    }
}

#[test]
fn non_standard_delimiters() {
    let text = "MSH$%*#@$PAS%1.2#S#3$RJZ$GW$X26$2024$$ADT%A03$ID1$P$2.5\r\
                PID$1$$A%%%B*C%%%D$X#F#Y#S#Z#T#W#R#V#E#U$P@Q";
    let m = parse(text);
    let d = m.delimiters();
    assert_eq!(
        (
            d.field,
            d.component,
            d.repetition,
            d.escape,
            d.subcomponent,
            d.truncation
        ),
        ('$', '%', '*', Some('#'), Some('@'), None)
    );
    assert_eq!(m.get("MSH-2").as_deref(), Some("%*#@"));
    assert_eq!(m.get("MSH-3.2").as_deref(), Some("1.2%3"));
    assert_eq!(m.message_type(), Some(("ADT".into(), "A03".into())));
    assert_eq!(m.get("PID-3[1].4").as_deref(), Some("B"));
    assert_eq!(m.get("PID-3[2].1").as_deref(), Some("C"));
    assert_eq!(m.get("PID-4").as_deref(), Some("X$Y%Z@W*V#U"));
    assert_eq!(m.get("PID-5.1.2").as_deref(), Some("Q"));
    // `|^~\&` are ordinary text under these delimiters.
    assert_eq!(
        parse("MSH$%*#@$A|B^C~D\\E&F").get("MSH-3").as_deref(),
        Some("A|B^C~D\\E&F")
    );
    // Components and subcomponents are split on bytes when their delimiter
    // is ASCII: never inside a character around it...
    let m = parse("MSH|^~\\&|PAS\rPID|1||é^ü&ö~ß^^€");
    assert_eq!(m.get("PID-3[1].1").as_deref(), Some("é"));
    assert_eq!(m.get("PID-3[1].2.1").as_deref(), Some("ü"));
    assert_eq!(m.get("PID-3[1].2.2").as_deref(), Some("ö"));
    assert_eq!(m.get("PID-3[2].1").as_deref(), Some("ß"));
    assert_eq!(m.get("PID-3[2].3").as_deref(), Some("€"));
    // ...and delimiters outside ASCII split where they stand.
    let m = parse("MSH|§~\\¤|PAS\rPID|1||é§ü¤ö§§x~y§z");
    assert_eq!(m.get("PID-3[1].1").as_deref(), Some("é"));
    assert_eq!(m.get("PID-3[1].2.2").as_deref(), Some("ö"));
    assert_eq!(m.get("PID-3[1].4").as_deref(), Some("x"));
    assert_eq!(m.get("PID-3[2].2").as_deref(), Some("z"));
}

#[test]
fn two_to_five_encoding_characters() {
    // By position (§2.5.4): a sender that sends no subcomponents may leave
    // out their separator, and one that sends no escape sequences the
    // escape character too.
    let m = parse(
        "MSH|^~\\|A\rPID|1||K1^^^RJZ^MR||SMITH&SONS^ANN||||||14 HAYES LANE\\F\\FLAT 2^^BROMLEY",
    );
    assert_eq!(m.delimiters().escape, Some('\\'));
    assert_eq!(m.delimiters().subcomponent, None);
    assert_eq!(m.get("PID-5.1").as_deref(), Some("SMITH&SONS"), "& is text");
    assert_eq!(m.get("PID-11.1").as_deref(), Some("14 HAYES LANE|FLAT 2"));
    assert_eq!(m.get("PID-11.3").as_deref(), Some("BROMLEY"));
    // \T\ names a separator the message does not have: kept as sent.
    assert_eq!(
        parse("MSH|^~\\|A\rPID|1|X\\T\\Y").get("PID-2").as_deref(),
        Some("X\\T\\Y")
    );
    let m = parse("MSH|^~|A\rPID|1|X&Y\\Z^W~V");
    assert_eq!(
        (m.delimiters().escape, m.delimiters().subcomponent),
        (None, None)
    );
    assert_eq!(m.get("PID-2.1").as_deref(), Some("X&Y\\Z"));
    assert_eq!(m.get("PID-2[2]").as_deref(), Some("V"));
    // A leniency: `^~&` from senders that do not escape.
    let m = parse("MSH|^~&|A\rPID|1|X&Y^Z|A\\F\\B");
    assert_eq!(m.delimiters().escape, None);
    assert_eq!(m.delimiters().subcomponent, Some('&'));
    assert_eq!(m.get("PID-2.1.2").as_deref(), Some("Y"));
    assert_eq!(
        m.get("PID-3").as_deref(),
        Some("A\\F\\B"),
        "no escape char: literal"
    );
    let m = parse("MSH|^~\\&#|A\rPID|1|X\\P\\Y#Z");
    assert_eq!(m.delimiters().truncation, Some('#'));
    assert_eq!(m.get("PID-2").as_deref(), Some("X#Y#Z"));
}

#[test]
fn parse_errors_name_their_location() {
    let cases: &[(&str, &str)] = &[
        ("", "segment 1"),
        ("\u{feff} \r\n\n", "segment 1"),
        ("PID|1|X", "segment 1"),
        ("EVN|A01\rMSH|^~\\&|A", "segment 1"),
        ("MSH", "MSH-1"),
        ("MSH\r", "MSH-1"),
        ("MSHX^~\\&|A", "MSH-1"),
        ("MSH ^~\\&|A", "MSH-1"),
        ("MSH|^|A", "MSH-2"),
        ("MSH||A", "MSH-2"),
        ("MSH|^~\\&#!|A", "MSH-2"),
        ("MSH|^^\\&|A", "MSH-2"),
        ("MSH|^~\\^|A", "MSH-2"),
        ("MSH|^~A&|A", "MSH-2"),
        ("MSH|^~\\ |A", "MSH-2"),
        ("MSH|^~\\&|A\rP1D|1", "segment 2"),
        ("MSH|^~\\&|A\r\n\r\npid|1", "segment 2"),
        ("MSH|^~\\&|A\rPIDX|1", "segment 2"),
        ("MSH|^~\\&|A\rPI", "segment 2"),
        ("MSH|^~\\&|A\rEVN|1\r PID|1", "segment 3"),
        ("MSH|^~\\&|A\rEVN|1\rPID^1", "segment 3"),
    ];
    for &(text, location) in cases {
        match Message::parse(text) {
            Ok(_) => panic!("{text:?} parsed"),
            Err(e) => {
                assert_eq!(e.location, location, "{text:?}: {e}");
                assert_eq!(e.to_string(), format!("{location}: {}", e.message));
            }
        }
    }
    // Accepted edge cases: a bare segment id, a digit-bearing Z-segment.
    let m = parse("MSH|^~\\&\rEVN\rZ01|x");
    assert_eq!(m.segment("EVN").map(|s| s.field_count()), Some(0));
    assert_eq!(m.get("Z01-1").as_deref(), Some("x"));
}

#[test]
fn escape_sequences() {
    let d = Delimiters::default();
    let cases = [
        (r"A\F\B\S\C\T\D\R\E\E\F", "A|B^C&D~E\\F"),
        (r"\X0D0A\", "\r\n"),
        (r"caf\XC3A9\", "café"),
        (r"caf\XE9\", "café"),
        (r"\X41\\X42\", "AB"),
        (r"line\.br\two", "line\ntwo"),
        (r"\H\bold\N\", "bold"),
        (r"\Q\", r"\Q\"),
        (r"\P\", r"\P\"),
        (r"\C2842\\M2442\", r"\C2842\\M2442\"),
        (r"\Zlocal\", r"\Zlocal\"),
        (r"\.sp\", r"\.sp\"),
        (r"\X0\|\XZZ\|\X\|\Xé0\", r"\X0\|\XZZ\|\X\|\Xé0\"),
        (r"end\", r"end\"),
        (r"a\F", r"a\F"),
        (r"\\", r"\\"),
        (r"C:\dir\file", r"C:\dir\file"),
        ("plain", "plain"),
    ];
    for (raw, want) in cases {
        assert_eq!(unescape(raw, &d), want, "{raw}");
    }
    assert!(matches!(
        unescape("plain", &d),
        std::borrow::Cow::Borrowed(_)
    ));
    let t = Delimiters {
        truncation: Some('#'),
        ..Delimiters::default()
    };
    assert_eq!(unescape(r"\P\", &t), "#");
    assert_eq!(escape("a#b|c", &t), r"a\P\b\F\c");
    assert_eq!(
        escape("x|y^z&w~v\\u\r\n", &d),
        r"x\F\y\S\z\T\w\R\v\E\u\X0D\\X0A\"
    );
    assert_eq!(escape("\"\"", &d), r"\X2222\");
    let bare = Delimiters {
        escape: None,
        ..Delimiters::default()
    };
    assert_eq!(escape("a|b^c\nd", &bare), "a b c d");
}

#[test]
fn escape_round_trips() {
    // With MLLP's block characters and other controls, which a sender's
    // `\X0B\` reads back as.
    let alphabet: Vec<char> = "ab |^~\\&#\r\n\"é.XF0\x0b\x1c\x00\t".chars().collect();
    let sets = [
        Delimiters::default(),
        Delimiters {
            truncation: Some('#'),
            ..Delimiters::default()
        },
    ];
    let mut rng = Lcg(7);
    for i in 0..2000 {
        let len = rng.below(12);
        let value: String = (0..len)
            .map(|_| alphabet[rng.below(alphabet.len())])
            .collect();
        let d = &sets[i % 2];
        let escaped = escape(&value, d);
        assert!(
            !escaped.contains(['|', '^', '~', '&'])
                && !escaped.contains(|c: char| c.is_ascii_control()),
            "{escaped:?}"
        );
        assert_eq!(unescape(&escaped, d), value, "{value:?} -> {escaped:?}");
        if i % 2 == 0 {
            // And through a whole message, as a subcomponent.
            let m = parse(&format!("MSH|^~\\&|{escaped}"));
            assert_eq!(m.get("MSH-3.1.1").unwrap_or_default(), value);
        }
    }
}

const MAX: usize = 200;

/// Five framed messages with junk, a newline, an abandoned frame, an
/// oversized frame and a lenient end block between them, plus the frames a
/// correct framer must produce for it.
fn mllp_stream() -> (Vec<u8>, Vec<Frame>) {
    let msgs: Vec<Vec<u8>> = (1..=5)
        .map(|i| format!("MSH|^~\\&|A|B|C|D|2024||ADT^A01|ID{i}|P|2.4\rPID|1||{i}\r").into_bytes())
        .collect();
    let mut s = b"junk before".to_vec();
    s.extend(frame(&msgs[0]));
    s.extend(b"\r\n \t\0"); // newline and padding after a frame: not garbage
    s.extend(frame(&msgs[1]));
    s.extend([b'x'; 300]); // a long junk run: reported once, 256 bytes
    s.extend(frame(&msgs[2]));
    s.extend(b"\x0Bhalf a frame"); // abandoned by the next start block
    s.extend(frame(&msgs[3]));
    s.push(0x0B);
    s.extend([b'y'; 500]); // oversized
    s.extend([0x1C, 0x0D]);
    s.push(0x0B);
    s.extend(&msgs[4]);
    s.extend(b"\x1CZ"); // end block not followed by CR: still ends the frame
    let expected = vec![
        Frame::Garbage(b"junk before".to_vec()),
        Frame::Message(msgs[0].clone()),
        Frame::Message(msgs[1].clone()),
        Frame::Garbage(vec![b'x'; 256]),
        Frame::Message(msgs[2].clone()),
        Frame::Garbage(b"\x0Bhalf a frame".to_vec()),
        Frame::Message(msgs[3].clone()),
        Frame::TooLarge {
            discarded: 500,
            head: vec![b'y'; 500],
        },
        Frame::Message(msgs[4].clone()),
    ];
    (s, expected)
}

#[test]
fn mllp_any_split_gives_the_same_frames() {
    let (stream, expected) = mllp_stream();
    let mut whole = Framer::new(MAX);
    assert_eq!(whole.push(&stream), expected);
    // The trailing "Z" starts a garbage run reported at the next start block.
    assert_eq!(whole.push(b"\x0B"), vec![Frame::Garbage(b"Z".to_vec())]);
    let mut rng = Lcg(1);
    for _ in 0..1000 {
        let mut framer = Framer::new(MAX);
        let mut got = Vec::new();
        let mut rest = stream.as_slice();
        while !rest.is_empty() {
            let cut = match rng.below(4) {
                0 => 0,
                1 => 1,
                2 => rng.below(8),
                _ => rng.below(400),
            }
            .min(rest.len());
            let (piece, tail) = rest.split_at(cut);
            got.extend(framer.push(piece));
            assert!(framer.pending() <= MAX + 2);
            rest = tail;
        }
        assert_eq!(got, expected);
    }
}

#[test]
fn mllp_oversized_frame_is_bounded_and_reported_once() {
    let mut framer = Framer::new(100);
    let big = frame(&[b'a'; 10_000]);
    let mut got = Vec::new();
    for piece in big.chunks(7) {
        got.extend(framer.push(piece));
        assert!(framer.pending() <= 102, "pending {}", framer.pending());
    }
    // Its first line is kept, 1 KiB of it at most, whatever the split.
    assert_eq!(
        got,
        vec![Frame::TooLarge {
            discarded: 10_000,
            head: vec![b'a'; 1024]
        }]
    );
    assert_eq!(framer.pending(), 0);
    assert_eq!(
        framer.push(&frame(&[b'b'; 100])),
        vec![Frame::Message(vec![b'b'; 100])]
    );
    assert_eq!(
        framer.push(&frame(&[b'c'; 101])),
        vec![Frame::TooLarge {
            discarded: 101,
            head: vec![b'c'; 101]
        }]
    );
    // The first line ends at its segment's end.
    let mut lines = b"MSH|^~\\&|PAS|RJZ|||2026||ADT^A01|BIG1|P|2.4\r".to_vec();
    lines.extend([b'z'; 300]);
    let mut pieces = Vec::new();
    for piece in frame(&lines).chunks(3) {
        pieces.extend(framer.push(piece));
    }
    assert_eq!(
        pieces,
        vec![Frame::TooLarge {
            discarded: lines.len(),
            head: b"MSH|^~\\&|PAS|RJZ|||2026||ADT^A01|BIG1|P|2.4".to_vec()
        }]
    );
    // An oversized frame cut short by a start block is still reported.
    let mut cut = vec![0x0B];
    cut.extend([b'd'; 150]);
    cut.extend(frame(b"ok"));
    assert_eq!(
        framer.push(&cut),
        vec![
            Frame::TooLarge {
                discarded: 150,
                head: vec![b'd'; 150]
            },
            Frame::Message(b"ok".to_vec())
        ]
    );
    assert_eq!(
        Framer::new(0).push(&frame(b"x")),
        vec![Frame::TooLarge {
            discarded: 1,
            head: b"x".to_vec()
        }]
    );
    assert_eq!(
        Framer::new(0).push(&frame(b"")),
        vec![Frame::Message(Vec::new())]
    );
}

#[test]
fn mllp_end_block_split_across_pushes() {
    let framed = frame(b"MSH|^~\\&|A");
    let (head, tail) = framed.split_at(framed.len() - 1);
    assert_eq!(head.last(), Some(&0x1C));
    let mut framer = Framer::new(MAX);
    // The frame is out at its 0x1C: a sender that leaves out the 0x0D and
    // waits for the ACK is answered.
    assert_eq!(
        framer.push(head),
        vec![Frame::Message(b"MSH|^~\\&|A".to_vec())]
    );
    assert_eq!(framer.pending(), 0);
    // The 0x0D arriving later completes the trailer; it is not garbage.
    assert_eq!(framer.push(tail), Vec::new());
    // 0x1C then a start block in the next push: frame ends, next one begins.
    assert_eq!(
        framer.push(b"\x0Bone\x1C"),
        vec![Frame::Message(b"one".to_vec())]
    );
    assert_eq!(
        framer.push(b"\x0Btwo\x1C\x0D\x0D"),
        vec![Frame::Message(b"two".to_vec())]
    );
    // A second 0x0D is padding between frames, not the start of garbage.
    assert_eq!(
        framer.push(b"x\x0Bthree\x1C\x0D"),
        vec![
            Frame::Garbage(b"x".to_vec()),
            Frame::Message(b"three".to_vec())
        ]
    );
    assert_eq!(frame(b"hi"), b"\x0Bhi\x1C\x0D");
}

fn random_location(rng: &mut Lcg, ids: &[&str]) -> String {
    if rng.below(10) == 0 {
        let alphabet = b"PIDMSH-[].0123456789x ";
        return (0..rng.below(16))
            .map(|_| char::from(alphabet[rng.below(alphabet.len())]))
            .collect();
    }
    let mut s = format!("{}-{}", ids[rng.below(ids.len())], rng.below(20));
    if rng.below(2) == 0 {
        s.push_str(&format!("[{}]", rng.below(4)));
    }
    for _ in 0..rng.below(3) {
        s.push_str(&format!(".{}", rng.below(6)));
    }
    s
}

/// Walks everything reachable in a parsed message and checks the ACK built
/// for it is itself parseable and echoes the control id.
fn exercise(m: &Message, rng: &mut Lcg) {
    for seg in m.segments() {
        for n in 0..=seg.field_count() + 1 {
            let Some(f) = seg.field(n) else { continue };
            let _ = (f.is_null(), f.raw());
            for r in f.repetitions() {
                let _ = r.value();
                for c in r.components() {
                    let _ = (c.value(), c.subcomponents().count(), c.subcomponent(2));
                }
            }
        }
    }
    let mut ids: Vec<&str> = m.segments().map(|s| s.id()).collect();
    ids.push("ZZZ");
    for _ in 0..8 {
        let _ = m.get(&random_location(rng, &ids));
    }
    let _ = (m.message_type(), m.version());
    let reply = ack(
        Some(m),
        AckCode::AE,
        "C1",
        "2024",
        &[AckError {
            location: Some(random_location(rng, &ids)),
            condition: Condition::InternalError,
            text: m.get("PID-5").unwrap_or_default(),
        }],
    );
    match Message::parse(&reply) {
        Ok(a) => assert_eq!(a.get("MSA-2"), m.control_id(), "{reply:?}"),
        Err(e) => panic!("ACK does not parse: {e}: {reply:?}"),
    }
}

#[test]
fn hostile_input_never_panics() {
    let mut rng = Lcg(42);
    let base = sample("\r").into_bytes();
    let alphabet = b"MSHPIDZ1|^~\\&#$\r\n\"X0A.br \xC3\xA9";
    let mut framer = Framer::new(512);
    let mut parsed = 0;
    for i in 0..20_000 {
        let mut bytes: Vec<u8> = match i % 4 {
            0 => (0..rng.below(300)).map(|_| rng.next() as u8).collect(),
            1 => {
                let mut b = b"MSH".to_vec();
                b.extend((0..rng.below(300)).map(|_| alphabet[rng.below(alphabet.len())]));
                b
            }
            _ => base.clone(),
        };
        if i % 4 >= 2 {
            for _ in 0..rng.below(6) {
                let at = rng.below(bytes.len());
                let b = if rng.below(2) == 0 {
                    rng.next() as u8
                } else {
                    alphabet[rng.below(alphabet.len())]
                };
                if let Some(slot) = bytes.get_mut(at) {
                    *slot = b;
                }
            }
        }
        if i % 4 == 3 {
            let at = rng.below(bytes.len());
            let run = vec![alphabet[rng.below(alphabet.len())]; rng.below(64)];
            bytes.splice(at..at, run);
            bytes.truncate(rng.below(bytes.len() + 1));
        }
        let text = String::from_utf8_lossy(&bytes);
        if let Ok(m) = Message::parse(&text) {
            parsed += 1;
            exercise(&m, &mut rng);
        }
        let mut rest = bytes.as_slice();
        while !rest.is_empty() {
            let (piece, tail) = rest.split_at(rng.below(64).min(rest.len()));
            let _ = framer.push(piece);
            assert!(framer.pending() <= 512);
            rest = tail;
        }
    }
    // The mutations must actually reach the parser's interior.
    assert!(parsed > 5_000, "only {parsed} inputs parsed");
}

#[test]
fn pathological_input_is_linear() {
    // Each location makes `get` walk a whole 1 MB field or segment list.
    let locations = [
        "MSH-3",
        "MSH-3.2.2",
        "MSH-500000",
        "MSH-3[400000]",
        "MSH-3.400000",
        "PID-1",
    ];
    let best = |text: &str| -> Duration {
        (0..2)
            .map(|_| {
                let t = Instant::now();
                let m = parse(text);
                for loc in locations {
                    let _ = m.get(loc);
                }
                let _ = m.segment("ZZZ");
                t.elapsed()
            })
            .min()
            .unwrap_or_default()
    };
    for unit in ["|", "\\", "^", "~", "\\.br", "\rPID|"] {
        let small = format!("MSH|^~\\&|{}", unit.repeat(100_000 / unit.len()));
        let big = format!("MSH|^~\\&|{}", unit.repeat(1_000_000 / unit.len()));
        let (t_small, t_big) = (best(&small), best(&big));
        // Quadratic work would make the ratio ~100; the floor keeps a very
        // fast small run from turning scheduler noise into a failure.
        let ratio = t_big.as_secs_f64() / t_small.max(Duration::from_millis(2)).as_secs_f64();
        assert!(ratio < 30.0, "{unit:?}: 100 KB {t_small:?}, 1 MB {t_big:?}");
    }
    for bare in ["|", "\\"] {
        assert!(Message::parse(&bare.repeat(1_000_000)).is_err());
    }
    let m = parse(&format!("MSH|^~\\&|{}", "\\".repeat(1_000_000)));
    assert_eq!(m.get("MSH-3").map(|v| v.len()), Some(1_000_000));
}

#[test]
fn ack_accept_swaps_sender_and_receiver() {
    let m = parse(&sample("\r"));
    let text = ack(Some(&m), AckCode::AA, "ACK0001", "20240331013600", &[]);
    assert_eq!(
        text,
        "MSH|^~\\&|GATEWAY|X26|PAS|RJZ|20240331013600||ACK^A01^ACK|ACK0001|P|2.4\rMSA|AA|MSG0000123\r"
    );
    let a = parse(&text);
    assert_eq!(a.message_type(), Some(("ACK".into(), "A01".into())));
    assert_eq!(a.get("MSA-2").as_deref(), Some("MSG0000123"));
    assert!(a.segment("ERR").is_none());
}

#[test]
fn ack_error_carries_err_segment() {
    let m = parse(&sample("\r"));
    let err = |location: &str| AckError {
        location: Some(location.into()),
        condition: Condition::DataType,
        text: "NHS number fails check|digit^ & ~ \\".into(),
    };
    let text = ack(Some(&m), AckCode::AE, "ACK2", "2024", &[err("PID-3[2].1")]);
    let a = parse(&text);
    assert_eq!(a.get("MSA-1").as_deref(), Some("AE"));
    assert_eq!(a.get("MSA-2").as_deref(), Some("MSG0000123"));
    assert_eq!(a.get("MSA-3").as_deref(), Some(err("").text.as_str()));
    // A v2.4 message: ERR-1 (ELD) as well, for engines of that version.
    assert_eq!(
        a.segment("ERR").map(|s| s.raw()),
        Some(
            "ERR|PID^1^3^102&Data type error&HL70357|PID^1^3^2^1|102^Data type error^HL70357|E||||NHS number fails check\\F\\digit\\S\\ \\T\\ \\R\\ \\E\\"
        )
    );
    assert_eq!(a.get("ERR-8").as_deref(), Some(err("").text.as_str()));
    assert_eq!(a.get("ERR-1.4.1").as_deref(), Some("102"));
    for (location, erl) in [
        ("PID-3", "PID^1^3"),
        ("PID-3[2]", "PID^1^3^2"),
        ("PID-3.1", "PID^1^3^1^1"),
        ("PID-11.1.2", "PID^1^11^1^1^2"),
        ("MRG[2]", "MRG^2"),
        ("MSH", "MSH^1"),
        ("segment 3", ""),
        ("PID[x]", ""),
    ] {
        let a = parse(&ack(Some(&m), AckCode::AE, "X", "2024", &[err(location)]));
        let raw = a.segment("ERR").and_then(|s| s.field(2)).map(|f| f.raw());
        assert_eq!(raw.unwrap_or(""), erl, "{location}");
    }
}

/// Two errors, as a v2.5 message's ACK gives them (one ERR each) and as a
/// v2.4 one's does (one ERR: every error in ERR-1, the first in the v2.5
/// fields).
#[test]
fn ack_gives_every_error_in_the_layout_of_the_messages_version() {
    let errors = [
        AckError {
            location: Some("PID-8".into()),
            condition: Condition::TableValueNotFound,
            text: "PID-8: 'X' is not in table 0001".into(),
        },
        AckError {
            location: Some("PV1-19".into()),
            condition: Condition::RequiredFieldMissing,
            text: "PV1-19: the visit number is required and missing".into(),
        },
    ];
    let message = |version: &str| {
        parse(&format!(
            "MSH|^~\\&|PAS|RJZ|GW|X26|2024||ADT^A01|M1|P|{version}\rPID|1"
        ))
    };
    let errs = |version: &str| -> (String, Vec<String>) {
        let a = parse(&ack(
            Some(&message(version)),
            AckCode::AE,
            "X",
            "2024",
            &errors,
        ));
        let errs = a
            .segments_named("ERR")
            .map(|s| s.raw().to_string())
            .collect();
        (a.get("MSA-3").unwrap_or_default(), errs)
    };
    let all = "PID-8: 'X' is not in table 0001; PV1-19: the visit number is required and missing";
    assert_eq!(
        errs("2.5"),
        (
            all.to_string(),
            vec![
                "ERR||PID^1^8|103^Table value not found^HL70357|E||||PID-8: 'X' is not in table 0001".to_string(),
                "ERR||PV1^1^19|101^Required field missing^HL70357|E||||PV1-19: the visit number is required and missing".to_string(),
            ]
        )
    );
    assert_eq!(
        errs("2.4"),
        (
            all.to_string(),
            vec![
                "ERR|PID^1^8^103&Table value not found&HL70357~PV1^1^19^101&Required field missing&HL70357|PID^1^8|103^Table value not found^HL70357|E||||PID-8: 'X' is not in table 0001".to_string(),
            ]
        )
    );
}

/// With `hl7v2.accept_acknowledgements`, a message in enhanced mode (MSH-15
/// or MSH-16 valued) is answered with the accept acknowledgement: `CA` once committed (held in quarantine
/// too, with its ERR), `CR` when refused, `CE` when the store failed.
#[test]
fn enhanced_mode_gets_the_accept_acknowledgement() {
    let message = |msh_15_16: &str| {
        parse(&format!(
            "MSH|^~\\&|PAS|RJZ|GW|X26|2024||ADT^A01|M1|P|2.4|||{msh_15_16}\rPID|1"
        ))
    };
    let error = |condition| AckError {
        location: Some("PID-8".into()),
        condition,
        text: "a reason".into(),
    };
    let code = |m: &Message, code, errors: &[AckError]| {
        parse(&ack_in_mode(Some(m), code, "X", "2024", errors, true))
            .get("MSA-1")
            .unwrap_or_default()
    };
    for modes in ["AL|NE", "AL", "|AL", "ER|AL"] {
        let m = message(modes);
        assert_eq!(code(&m, AckCode::AA, &[]), "CA", "{modes}");
        let held = error(Condition::TableValueNotFound);
        assert_eq!(
            code(&m, AckCode::AE, std::slice::from_ref(&held)),
            "CA",
            "{modes}"
        );
        assert_eq!(
            code(&m, AckCode::AR, &[error(Condition::SegmentSequence)]),
            "CR"
        );
        assert_eq!(
            code(&m, AckCode::AR, &[error(Condition::InternalError)]),
            "CE"
        );
    }
    for original in ["", "|", " | "] {
        let m = message(original);
        assert_eq!(code(&m, AckCode::AA, &[]), "AA", "{original:?}");
        let held = error(Condition::TableValueNotFound);
        assert_eq!(code(&m, AckCode::AE, &[held]), "AE", "{original:?}");
    }
    // Asking for no accept acknowledgement but for an application one:
    // the gateway's answer is final, so that is what it gets.
    for modes in ["NE|AL", "NE|ER"] {
        assert_eq!(code(&message(modes), AckCode::AA, &[]), "AA", "{modes}");
    }
    assert_eq!(code(&message("NE|NE"), AckCode::AA, &[]), "CA");
    // Unless configured, enhanced mode is answered as original mode is.
    let m = message("AL|NE");
    let original = parse(&ack(Some(&m), AckCode::AA, "X", "2024", &[]));
    assert_eq!(original.get("MSA-1").as_deref(), Some("AA"));
}

/// MSA-3 is a display field: it gives the first errors' texts and how
/// many more there are, while every error keeps its own ERR.
#[test]
fn msa_3_gives_the_first_reasons_and_counts_the_rest() {
    let errors: Vec<AckError> = (1..=8)
        .map(|n| AckError {
            location: Some(format!("PID-3[{n}]")),
            condition: Condition::DataType,
            text: format!("PID-3[{n}].1: reason {n}"),
        })
        .collect();
    let msg = parse("MSH|^~\\&|PAS|RJZ|GW|X26|2024||ADT^A01|M1|P|2.5\rPID|1");
    let a = parse(&ack(Some(&msg), AckCode::AE, "X", "2024", &errors));
    let first: Vec<String> = (1..=MSA_3_REASONS)
        .map(|n| format!("PID-3[{n}].1: reason {n}"))
        .collect();
    assert_eq!(
        a.get("MSA-3").as_deref(),
        Some(format!("{}; and {} more (ERR)", first.join("; "), 8 - MSA_3_REASONS).as_str())
    );
    assert_eq!(a.segments_named("ERR").count(), 8);
    let five = parse(&ack(Some(&msg), AckCode::AE, "X", "2024", &errors[..5]));
    assert_eq!(
        five.get("MSA-3").as_deref(),
        Some(first.join("; ").as_str())
    );
    // Before v2.5 the one ERR carries one text: MSA-3 gives every reason
    // that fits in MSA_3_MAX_CHARS.
    let old = parse("MSH|^~\\&|PAS|RJZ|GW|X26|2024||ADT^A01|M1|P|2.4\rPID|1");
    let a = parse(&ack(Some(&old), AckCode::AE, "X", "2024", &errors));
    let all: Vec<&str> = errors.iter().map(|e| e.text.as_str()).collect();
    assert_eq!(a.get("MSA-3").as_deref(), Some(all.join("; ").as_str()));
    let many: Vec<AckError> = (1..=200)
        .map(|n| AckError {
            location: Some(format!("PID-3[{n}]")),
            condition: Condition::DataType,
            text: format!("PID-3[{n}].1: NHS number {n:010} fails the Modulus 11 check"),
        })
        .collect();
    let a = parse(&ack(Some(&old), AckCode::AE, "X", "2024", &many));
    let text = a.get("MSA-3").unwrap_or_default();
    let (shown, more) = text.rsplit_once("; and ").expect("a count of the rest");
    assert!(shown.len() <= MSA_3_MAX_CHARS, "{}", shown.len());
    let kept = shown.split("; ").count();
    assert_eq!(more, format!("{} more (ERR)", 200 - kept));
    assert!(kept > 5, "{kept}");
}

/// ERR-1 (ELD) is the field of v2.3 and v2.4 ACKs; from v2.5, which has
/// ERR-2 and ERR-3 for it, it is left empty. A version that does not read
/// is taken as 2.5.
#[test]
fn err_1_is_given_to_v2_3_and_v2_4_messages() {
    let error = AckError {
        location: Some("PID-8".into()),
        condition: Condition::TableValueNotFound,
        text: "bad".into(),
    };
    for (version, eld) in [
        ("2.3", true),
        ("2.3.1", true),
        ("2.4", true),
        ("2.5", false),
        ("2.5.1", false),
        ("", false),
        ("garbage", false),
        ("2.6", false),
        ("2.10", false),
    ] {
        let m = parse(&format!(
            "MSH|^~\\&|PAS|RJZ|GW|X26|2024||ADT^A01|M1|P|{version}\rPID|1"
        ));
        let a = parse(&ack(
            Some(&m),
            AckCode::AE,
            "X",
            "2024",
            std::slice::from_ref(&error),
        ));
        let eld = eld.then(|| "PID^1^8^103&Table value not found&HL70357".to_string());
        assert_eq!(
            a.get("ERR-1"),
            eld.clone()
                .map(|e| e.split('^').next().unwrap().to_string()),
            "{version}"
        );
        assert_eq!(
            a.segment("ERR")
                .and_then(|s| s.field(1))
                .map(|f| f.raw().to_string())
                .filter(|f| !f.is_empty()),
            eld,
            "{version}"
        );
        assert_eq!(a.get("ERR-3.1").as_deref(), Some("103"), "{version}");
    }
}

#[test]
fn ack_reject_without_message() {
    let text = ack(None, AckCode::AA, "ACK9", "20240331", &[]);
    assert_eq!(text, "MSH|^~\\&|||||20240331||ACK|ACK9|P|2.5\rMSA|AR|\r");
    let e = AckError {
        location: None,
        condition: Condition::InternalError,
        text: "unparseable".into(),
    };
    let a = parse(&ack(None, AckCode::AE, "ACK9", "20240331", &[e]));
    assert_eq!(a.get("MSA-1").as_deref(), Some("AR"));
    assert_eq!(a.get("MSA-2"), None);
    assert_eq!(
        a.segment("ERR").map(|s| s.raw()),
        Some("ERR|||207^Application internal error^HL70357|E||||unparseable")
    );
}

#[test]
fn ack_echoes_escaped_fields_of_standard_delimiters_as_sent() {
    let m = parse("MSH|^~\\&|PAS^1.2|R\\T\\J|GW|X26|2024||ADT^A03|ID\\F\\1~2|P|2.5");
    let text = ack(Some(&m), AckCode::AA, "A1", "2024", &[]);
    assert_eq!(
        text,
        "MSH|^~\\&|GW|X26|PAS^1.2|R\\T\\J|2024||ACK^A03^ACK|A1|P|2.5\rMSA|AA|ID\\F\\1~2\r"
    );
    assert_eq!(parse(&text).get("MSH-6"), Some("R&J".to_string()));
}

#[test]
fn ack_transcodes_non_standard_delimiters() {
    let m = parse("MSH$%*#@$PAS%1.2#S#3$RJZ$GW$X26$2024$$ADT%A03$ID#F#1|x$P$2.5");
    let text = ack(Some(&m), AckCode::AA, "A1", "2024", &[]);
    assert_eq!(
        text,
        "MSH|^~\\&|GW|X26|PAS^1.2%3|RJZ|2024||ACK^A03^ACK|A1|P|2.5\rMSA|AA|ID$1\\F\\x\r"
    );
    assert_eq!(parse(&text).get("MSA-2"), m.control_id());
}

#[test]
fn an_ack_never_carries_a_control_character_a_sender_escaped() {
    // `\X0B\` and `\X1C\` read back as MLLP's block characters: echoed raw,
    // they would cut the ACK's frame short.
    for text in [
        "MSH|^~\\&|PAS|RJZ|GW|X26|2024||ADT^\\X0B\\^ADT_A01|ID\\X1C\\1|P|2.5",
        "MSH$%*#@$PAS\\X0B\\$RJZ$GW$X26$2024$$ADT%A03$ID#X1C#1$P$2.5",
    ] {
        let m = parse(text);
        let ack = ack(Some(&m), AckCode::AA, "A1", "2024", &[]);
        assert!(
            !ack.trim_end_matches('\r')
                .split('\r')
                .any(|segment| segment.contains(|c: char| c.is_ascii_control())),
            "{ack:?}"
        );
        assert_eq!(parse(&ack).get("MSA-2"), m.control_id(), "{ack:?}");
    }
}

/// A feed reuses the patient facts of an earlier message with the same
/// `adt::patient_key`, so the key must hold everything the facts are read
/// from. Over every golden fixture: reading with the facts already known
/// gives the same message; changing what the key leaves out (the message's
/// time, id and event, EVN, PV1) changes neither the key nor the facts;
/// changing a PID or PD1 field, the sender or a delimiter changes the key.
#[test]
fn the_patient_key_decides_the_patient_facts() {
    use crate::hl7v2::adt::{AdtContext, patient_key, read, read_with};
    let cx = AdtContext::default();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/hl7v2");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "hl7"))
        .collect();
    files.sort();
    let mut checked = 0;
    for path in &files {
        let text = std::fs::read_to_string(path).unwrap();
        let lines: Vec<&str> = text.split(['\r', '\n']).filter(|l| !l.is_empty()).collect();
        let message = |lines: &[String]| parse(&lines.join("\r"));
        let original: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        let m = message(&original);
        let Ok(adt) = read(&m, &cx) else { continue };
        let key = patient_key(&m).expect("a fixture with a PID");
        let again = read_with(&m, &cx, Some(adt.patient.clone())).unwrap();
        assert_eq!(
            (&again.patient, &again.visit, &again.prior, again.time_ms),
            (&adt.patient, &adt.visit, &adt.prior, adt.time_ms),
            "{path:?}"
        );
        // Outside the key: MSH-7, MSH-10, the event, EVN, PV1.
        let outside = |line: &String| -> String {
            let mut fields: Vec<String> = line.split('|').map(str::to_string).collect();
            match fields[0].as_str() {
                "MSH" if fields.len() > 9 => {
                    fields[6] = "202001020304".into();
                    fields[9] = "OTHER-ID".into();
                    fields[8] = fields[8].replace("A04", "A08").replace("A01", "A08");
                }
                "EVN" if fields.len() > 2 => fields[2] = "202001020304".into(),
                "PV1" if fields.len() > 3 => fields[3] = "WARD 9^^^RJZ30".into(),
                _ => {}
            }
            fields.join("|")
        };
        let other: Vec<String> = original.iter().map(outside).collect();
        let o = message(&other);
        assert_eq!(patient_key(&o).as_deref(), Some(key.as_str()), "{path:?}");
        if let Ok(other) = read(&o, &cx) {
            assert_eq!(other.patient, adt.patient, "{path:?}");
        }
        // Inside: a PID field, a PD1 field, MSH-4, a delimiter.
        let with = |segment: &str, n: usize| -> Vec<String> {
            original
                .iter()
                .map(|line| {
                    let mut fields: Vec<String> = line.split('|').map(str::to_string).collect();
                    if fields[0] == segment {
                        while fields.len() <= n {
                            fields.push(String::new());
                        }
                        fields[n].push('X');
                    }
                    fields.join("|")
                })
                .collect()
        };
        for (segment, n) in [("PID", 5), ("PID", 8), ("PID", 32), ("PD1", 3), ("MSH", 3)] {
            let changed = message(&with(segment, n));
            if segment != "PD1" || m.segment("PD1").is_some() {
                assert_ne!(
                    patient_key(&changed).as_deref(),
                    Some(key.as_str()),
                    "{path:?} {segment}-{n}"
                );
            }
        }
        let swapped: Vec<String> = original
            .iter()
            .map(|l| l.replacen("MSH|^~\\&", "MSH|^~\\#", 1))
            .collect();
        assert_ne!(
            patient_key(&message(&swapped)).as_deref(),
            Some(key.as_str())
        );
        checked += 1;
    }
    assert!(checked >= 12, "{checked} fixtures read");
}

/// The framer takes a frame's content a run at a time; over random streams
/// of block bytes, CR, LF and content, with small frame limits, runs of any
/// length give exactly the frames single bytes give, and neither holds
/// more than the limit. (`mllp_oversized_frame_is_bounded_and_reported_once`
/// pins the count of an oversized frame's bytes.)
#[test]
fn mllp_runs_and_single_bytes_frame_alike() {
    let alphabet = [
        0x0B, 0x1C, 0x0D, b'\n', b' ', b'\t', 0, b'a', b'b', b'|', 0xFF,
    ];
    let mut rng = Lcg(7);
    for case in 0..2000 {
        let max = 1 + rng.below(40);
        let len = rng.below(300);
        let stream: Vec<u8> = (0..len)
            .map(|_| match rng.below(10) {
                0..=5 => b'x',
                _ => alphabet[rng.below(alphabet.len())],
            })
            .collect();
        let mut by_byte = Framer::new(max);
        let mut expected = Vec::new();
        for b in &stream {
            expected.extend(by_byte.push(std::slice::from_ref(b)));
            assert!(by_byte.pending() <= max, "case {case}");
        }
        let mut by_run = Framer::new(max);
        let mut got = Vec::new();
        let mut rest = stream.as_slice();
        while !rest.is_empty() {
            let (piece, tail) = rest.split_at(rng.below(rest.len() + 1).max(1));
            got.extend(by_run.push(piece));
            assert!(by_run.pending() <= max, "case {case}");
            rest = tail;
        }
        assert_eq!(got, expected, "case {case}: {stream:?} (max {max})");
        assert_eq!(by_run.pending(), by_byte.pending(), "case {case}");
    }
}

/// What the mapping reads once is reported when it comes again: a second
/// PV1, PD1-3's second practice, an EVN-1 other than the trigger (a note);
/// and an A40 with a second merge is refused, not half applied.
#[test]
fn repeated_segments_and_repetitions_the_mapping_reads_once_are_reported() {
    use crate::hl7v2::adt::{AdtContext, AdtError, read, unmapped};
    let cx = AdtContext::default();
    let m = parse(
        "MSH|^~\\&|PAS|RJZ|GW|OB|202607141018||ADT^A08|R1|P|2.4\rEVN|A01|202607141018\r\
         PID|1||9990000018^^^NHS^NH||PAGE^Ann\rPD1|||FIRST^^G84001~SECOND^^G84002\r\
         PV1|1|E|ED^^^RJZ30||||||||||||||||V1^^^RJZ^VN\rPV1|1|I|WARD^^^RJZ30||||||||||||||||V1^^^RJZ^VN\r",
    );
    let adt = read(&m, &cx).unwrap();
    let reported = unmapped(&m, adt.event);
    assert!(
        reported.contains(&"PV1[2] (repeated segment not mapped)".to_string()),
        "{reported:?}"
    );
    assert!(reported.contains(&"PD1-3[2]".to_string()), "{reported:?}");
    // PID-2 is read for an NHS number alone: another identifier there is
    // reported; the NHS number is not, nor a hospital number PID-3 has.
    let legacy = parse(
        "MSH|^~\\&|PAS|RJZ|GW|OB|202607141018||ADT^A31|R2|P|2.3\rEVN|A31|202607141018\r\
         PID|1|9990000018^^^NHS^NH~X77^^^OTHERTRUST^PI~K1^^^RJZ^MR|K1^^^RJZ^MR||PAGE^Ann\r",
    );
    let old = read(&legacy, &cx).unwrap();
    assert_eq!(
        unmapped(&legacy, old.event),
        vec!["PID-2[2] (not an NHS number)".to_string()]
    );
    assert_eq!(old.patient.nhs_number.as_deref(), Some("9990000018"));
    assert!(
        adt.notes
            .iter()
            .any(|n| n.starts_with("EVN-1: A01 differs")),
        "{:?}",
        adt.notes
    );
    let merge = parse(
        "MSH|^~\\&|PAS|RJZ|GW|OB|202607141018||ADT^A40|R2|P|2.4\rEVN|A40|202607141018\r\
         PID|1||K1^^^RJZ^MR\rMRG|K2^^^RJZ^MR\rPID|1||K3^^^RJZ^MR\rMRG|K4^^^RJZ^MR\r",
    );
    match read(&merge, &cx) {
        Err(AdtError::Invalid(errors)) => {
            assert!(errors.iter().any(|e| e.location == "MRG[2]"), "{errors:?}")
        }
        other => panic!("a second merge was not refused: {other:?}"),
    }
}

/// Codes and identities as NHS feeds send them: NHS numbers shown with
/// hyphens, a site's MSH-4, GMC and GMP codes, site locations, the NHS Data
/// Dictionary's complete code systems, and a death flag that contradicts
/// its date.
#[test]
fn nhs_codes_and_identities_read_as_nhs_feeds_send_them() {
    use crate::hl7v2::adt::{Adt, AdtContext, AdtError, read};
    let cx = AdtContext::default();
    // An A03 from `msh4` with PID fields and PD1-4 and PV1 fields set.
    let message = |msh4: &str, pid: &[(usize, &str)], pd1_4: &str, pv1: &[(usize, &str)]| {
        let mut p = vec![""; 33];
        p[1] = "1";
        p[3] = "K1^^^^MR~999-000-0018^^^NHS^NH";
        p[5] = "PAGE^Ann";
        for &(n, v) in pid {
            p[n] = v;
        }
        let mut v = vec![""; 46];
        v[1] = "1";
        v[2] = "I";
        v[19] = "V1";
        for &(n, value) in pv1 {
            v[n] = value;
        }
        parse(&format!(
            "MSH|^~\\&|PAS|{msh4}|GW|OB|202607141018||ADT^A03|R1|P|2.4\rEVN|A03|202607141018\r\
             PID|{}\rPD1||||{pd1_4}\rPV1|{}\r",
            p[1..].join("|"),
            v[1..].join("|")
        ))
    };
    let ok = |m: &Message| -> Adt { read(m, &cx).unwrap_or_else(|e| panic!("{e:?}")) };
    let refused = |m: &Message| -> Vec<(String, String)> {
        match read(m, &cx) {
            Err(AdtError::Invalid(errors)) => {
                errors.into_iter().map(|e| (e.location, e.reason)).collect()
            }
            other => panic!("taken: {other:?}"),
        }
    };
    let noted = |adt: &Adt, start: &str| adt.notes.iter().any(|n| n.starts_with(start));

    // A site of RJZ sends: hospital and visit numbers are the trust's.
    let site = ok(&message("RJZ30", &[], "", &[(3, "^^^RJZ30"), (36, "54")]));
    assert_eq!(site.sender, "RJZ");
    assert!(
        noted(&site, "MSH-4: RJZ30 is a site of trust RJZ"),
        "{:?}",
        site.notes
    );
    assert_eq!(site.patient.nhs_number.as_deref(), Some("9990000018"));
    let local = &site.patient.identifiers[1];
    assert!(
        local["system"].as_str().unwrap().ends_with("/RJZ"),
        "{local}"
    );
    let visit = site.visit.as_ref().unwrap();
    assert!(
        visit.identifier["system"]
            .as_str()
            .unwrap()
            .ends_with("/RJZ"),
        "{}",
        visit.identifier
    );
    assert_eq!(
        visit.location.as_ref().unwrap()["identifier"]["system"],
        "https://fhir.nhs.uk/Id/ods-site-code"
    );
    assert_eq!(
        visit.discharge_disposition.as_ref().unwrap()["coding"][0]["code"],
        "54"
    );
    // A site named as the authority is its trust too.
    let named = ok(&message(
        "RJZ",
        &[(3, "K1^^^RJZ30^MR")],
        "",
        &[(19, "V1^^^RJZ30^VN")],
    ));
    let local = &named.patient.identifiers[0];
    assert!(
        local["system"].as_str().unwrap().ends_with("/RJZ"),
        "{local}"
    );
    let visit = &named.visit.as_ref().unwrap().identifier;
    assert!(
        visit["system"].as_str().unwrap().ends_with("/RJZ"),
        "{visit}"
    );
    let trust = ok(&message("RJZ", &[], "", &[(3, "^^^RJZ")]));
    assert_eq!(trust.sender, "RJZ");
    assert_eq!(
        trust.visit.as_ref().unwrap().location.as_ref().unwrap()["identifier"]["system"],
        "https://fhir.nhs.uk/Id/ods-organization-code"
    );

    // PD1-4: the system its assigning authority or type names, else its
    // form's.
    for (xcn, system) in [
        ("C3456789^DARWIN^SAMUEL^^^DR^^^GMC", Some("gmc-number")),
        ("C34567890^DARWIN", Some("gmc-number")),
        ("1234567^DARWIN", Some("gmc-number")),
        ("G1234567^DARWIN", Some("gmp-number")),
        ("X99^DARWIN^^^^^^^GMP", Some("gmp-number")),
        ("X99^DARWIN^^^^^^^RJZ^^^^GMC", Some("gmc-number")),
        ("12345678^DARWIN", None),
        ("X99^DARWIN", None),
    ] {
        let adt = ok(&message("RJZ", &[], xcn, &[]));
        let gp = &adt.patient.general_practitioner[0]["identifier"];
        match system {
            Some(system) => assert!(
                gp["system"].as_str().unwrap().ends_with(system),
                "{xcn}: {gp}"
            ),
            None => {
                assert!(gp.get("system").is_none(), "{xcn}: {gp}");
                assert!(noted(&adt, "PD1-4: "), "{:?}", adt.notes);
            }
        }
    }

    // PV1-36: a destination; or a method, the destination then in PV1-37.
    let discharge = message("RJZ", &[], "", &[(36, "4"), (37, "79")]);
    let method = ok(&discharge);
    assert!(noted(&method, "PV1-36: \"4\" is an NHS discharge method"));
    let reported = crate::hl7v2::adt::unmapped(&discharge, method.event);
    assert!(!reported.contains(&"PV1-37".to_string()), "{reported:?}");
    let visit = method.visit.as_ref().unwrap();
    assert_eq!(
        visit.discharge_disposition.as_ref().unwrap()["coding"][0]["code"],
        "79"
    );
    let alone = ok(&message("RJZ", &[], "", &[(36, "4")]));
    assert_eq!(alone.visit.as_ref().unwrap().discharge_disposition, None);
    // SNOMED CT concept ids by their form: partition 00 or 10, Verhoeff.
    for (code, system) in [
        (
            "54",
            Some("https://fhir.hl7.org.uk/CodeSystem/UKCore-DischargeDestinationEngland"),
        ),
        ("306689006", Some("http://snomed.info/sct")),
        ("138875005", Some("http://snomed.info/sct")),
        ("73211009", Some("http://snomed.info/sct")),
        ("22298006", Some("http://snomed.info/sct")),
        ("169069000", Some("http://snomed.info/sct")),
        ("1077031000000103", Some("http://snomed.info/sct")),
        ("306689007", None),
        ("123456", None),
        ("1234567", None),
        ("0306689006", None),
        ("01", None),
    ] {
        let coding = crate::hl7v2::adt::discharge_destination(code);
        let got = coding
            .as_ref()
            .map(|c| c["coding"][0]["system"].as_str().unwrap());
        assert_eq!(got, system, "{code}");
    }
    // ECDS's SNOMED CT destinations under SNOMED; another code is noted and
    // left out, and the discharge goes in.
    let snomed = ok(&message("RJZ", &[], "", &[(36, "306689006")]));
    let coding = &snomed
        .visit
        .as_ref()
        .unwrap()
        .discharge_disposition
        .as_ref()
        .unwrap()["coding"][0];
    assert_eq!(coding["system"], "http://snomed.info/sct");
    for (pv1, at) in [
        (&[(36, "01")][..], "PV1-36"),
        (&[(36, "4"), (37, "01")][..], "PV1-37"),
    ] {
        let other = ok(&message("RJZ", &[], "", pv1));
        assert_eq!(other.visit.as_ref().unwrap().discharge_disposition, None);
        assert!(noted(&other, &format!("{at}: \"01\"")), "{:?}", other.notes);
    }
    // PV1-14: an admit source outside the NHS list is noted and left out.
    let source = ok(&message("RJZ", &[], "", &[(14, "7")]));
    assert_eq!(source.visit.as_ref().unwrap().admit_source, None);
    assert!(noted(&source, "PV1-14: \"7\""), "{:?}", source.notes);
    let source = ok(&message("RJZ", &[], "", &[(14, "19")]));
    assert!(source.visit.as_ref().unwrap().admit_source.is_some());
    // Table 0007 A is an accident.
    let accident = ok(&message("RJZ", &[], "", &[(4, "A")]));
    let priority = accident.visit.as_ref().unwrap().priority.as_ref().unwrap();
    assert_eq!(priority["coding"][1]["display"], "Accident");

    // PID-30 is read beside a date of death, and `N` contradicts it.
    let errors = refused(&message("RJZ", &[(29, "20261130"), (30, "N")], "", &[]));
    assert_eq!(errors[0].0, "PID-30", "{errors:?}");
    let errors = refused(&message("RJZ", &[(29, "20261130"), (30, "X")], "", &[]));
    assert_eq!(errors[0].0, "PID-30", "{errors:?}");
    let dead = ok(&message("RJZ", &[(29, "20261130"), (30, "Y")], "", &[]));
    assert_eq!(
        dead.patient.deceased.as_ref().unwrap().0,
        "deceasedDateTime"
    );
    let alive = ok(&message("RJZ", &[(30, "N")], "", &[]));
    assert_eq!(
        alive.patient.deceased,
        Some(("deceasedBoolean", serde_json::json!(false)))
    );

    // PID-13 `""` deletes the phones unless PID-14 sends one.
    let deleted = ok(&message("RJZ", &[(13, "\"\"")], "", &[]));
    assert!(deleted.patient.cleared.contains(&"telecom"));
    let work = ok(&message(
        "RJZ",
        &[(13, "\"\""), (14, "^WPN^PH^^^020^1234567")],
        "",
        &[],
    ));
    assert!(!work.patient.cleared.contains(&"telecom"));
    assert_eq!(work.patient.telecom.len(), 1);
    let both = ok(&message("RJZ", &[(13, "\"\""), (14, " \"\" ")], "", &[]));
    assert!(both.patient.cleared.contains(&"telecom"));
    let text = ok(&message("RJZ", &[(13, "\"\" X")], "", &[]));
    assert!(!text.patient.cleared.contains(&"telecom"));

    // PID-32 without an NHS number is noted, not silently dropped.
    let untraced = ok(&message(
        "RJZ",
        &[(3, "K1^^^RJZ^MR"), (32, "NSTS02")],
        "",
        &[],
    ));
    assert!(noted(&untraced, "PID-32: NSTS02"), "{:?}", untraced.notes);
}

/// Components and subcomponents the mapping does not read, inside fields
/// it does, are reported too (the dry run shows them): an identifier's
/// dates and its authority's OID, a place's building, a time's precision.
#[test]
fn components_the_mapping_does_not_read_are_reported() {
    use crate::hl7v2::adt::{AdtContext, read, unmapped};
    let m = parse(
        "MSH|^~\\&|PAS|RJZ|GW|OB|202607141018||ADT^A03|C1|P|2.4\rEVN|A03|202607141018\r\
         PID|1||K1^^^RJZ&1.2.826.0.1&ISO^MR^^20200101^20251231~9990000018^^^NHS&2.16.840.1.113883.2.1.4.1&ISO^NH||PAGE^Ann||19380305^D\r\
         PD1||||G1234567^SMITH^JOHN^^^DR^^^GMP\r\
         PV1|1|I|WARD 5^^^RJZ30^^\"\"^MAIN~WARD 6^^^RJZ30||||||||||||||||V1^^^RJZ^VN|||||||||||||||||4|79^20260714\r",
    );
    let adt = read(&m, &AdtContext::default()).unwrap();
    // (The NHS number's authority OID is what its system says; a null in
    // an unread component says nothing.)
    assert_eq!(
        unmapped(&m, adt.event),
        [
            "PID-3[1].4.2",
            "PID-3[1].4.3",
            "PID-3[1].7",
            "PID-3[1].8",
            "PID-7.2",
            "PV1-3[2]",
            "PV1-3[1].7",
            "PV1-37.2",
        ]
    );
}

/// An event time needs a date at least: to the day, hour or minute it is
/// taken; a month or a year alone is refused at its field, saying so.
#[test]
fn an_event_time_is_taken_from_a_day_on() {
    use crate::hl7v2::adt::{AdtContext, AdtError, read};
    let cx = AdtContext::default();
    let message = |evn2: &str| {
        parse(&format!(
            "MSH|^~\\&|PAS|RJZ|GW|OB|202607141018||ADT^A28|R1|P|2.4\rEVN|A28|{evn2}\r\
             PID|1||9990000018^^^NHS^NH||PAGE^Ann\r"
        ))
    };
    for taken in ["20260714", "2026071410", "202607141018"] {
        assert!(read(&message(taken), &cx).is_ok(), "{taken}");
    }
    for refused in ["202607", "2026"] {
        match read(&message(refused), &cx) {
            Err(AdtError::Invalid(errors)) => {
                assert_eq!(errors[0].location, "EVN-2", "{errors:?}");
                assert!(
                    errors[0].reason.contains("not precise to the day"),
                    "{errors:?}"
                );
            }
            other => panic!("{refused} taken: {other:?}"),
        }
    }
}

/// MSH-11.1: a live gateway takes production messages alone, so a
/// training system pointed at it is refused (`AR`, 202) instead of written
/// into live records; a test instance takes what it is told to; a message
/// without MSH-11 is taken.
#[test]
fn processing_ids_not_taken_are_refused_at_msh_11() {
    use crate::hl7v2::adt::{AdtContext, AdtError, read};
    let message = |processing: &str| {
        parse(&format!(
            "MSH|^~\\&|PAS|RJZ|GW|OB|202607141018||ADT^A28|R1|{processing}|2.4\rEVN|A28|202607141018\r\
             PID|1||9990000018^^^NHS^NH||PAGE^Ann\r"
        ))
    };
    let live = AdtContext::default();
    match read(&message("T"), &live) {
        Err(AdtError::Unsupported {
            location,
            condition,
            reason,
        }) => {
            assert_eq!((location.as_str(), condition.code()), ("MSH-11.1", 202));
            assert!(reason.contains("processing id T"), "{reason}");
        }
        other => panic!("a training message taken by a live gateway: {other:?}"),
    }
    assert!(read(&message("D^T"), &live).is_err());
    assert!(read(&message("P^T"), &live).is_ok());
    assert!(read(&message(""), &live).is_ok());
    let test_instance = AdtContext {
        processing_ids: vec!["T".into()],
        ..AdtContext::default()
    };
    assert!(read(&message("T"), &test_instance).is_ok());
    assert!(read(&message("P"), &test_instance).is_err());
}

/// MSH-12.1: the mapping is written to 2.3-2.5, so a message of another
/// version is refused (`AR`, 203) instead of read as if it were one; a
/// trust can let a later version in; a message without MSH-12 is taken.
#[test]
fn versions_not_taken_are_refused_at_msh_12() {
    use crate::hl7v2::adt::{AdtContext, AdtError, read};
    let message = |version: &str| {
        parse(&format!(
            "MSH|^~\\&|PAS|RJZ|GW|OB|202607141018||ADT^A28|R1|P|{version}\rEVN|A28|202607141018\r\
             PID|1||9990000018^^^NHS^NH||PAGE^Ann\r"
        ))
    };
    let default = AdtContext::default();
    for version in ["2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.5.1^GBR", ""] {
        assert!(read(&message(version), &default).is_ok(), "{version}");
    }
    for version in ["2.2", "2.6", "2.8.2", "3.0", "v2.4"] {
        match read(&message(version), &default) {
            Err(AdtError::Unsupported {
                location,
                condition,
                reason,
            }) => {
                assert_eq!((location.as_str(), condition.code()), ("MSH-12.1", 203));
                let version = version.split('^').next().unwrap();
                assert!(reason.contains(&format!("version {version} ")), "{reason}");
                assert!(reason.ends_with("2.3, 2.3.1, 2.4, 2.5, 2.5.1"), "{reason}");
            }
            other => panic!("version {version} taken: {other:?}"),
        }
    }
    let later = AdtContext {
        versions: vec!["2.4".into(), "2.6".into()],
        ..AdtContext::default()
    };
    assert!(read(&message("2.6"), &later).is_ok());
    assert!(read(&message("2.5"), &later).is_err());
}

/// Each mapping error carries the HL7 table 0357 code of its kind, which
/// its ERR-3 gives: a field required and missing 101, a value of the wrong
/// form 102, a code outside its table 103, a second merge group or a
/// missing PV1 100.
#[test]
fn mapping_errors_carry_the_condition_of_their_kind() {
    use crate::hl7v2::adt::{AdtContext, AdtError, read};
    let cx = AdtContext::default();
    let conditions = |text: &str| -> Vec<(String, u16)> {
        match read(&parse(text), &cx) {
            Err(AdtError::Invalid(errors)) => errors
                .into_iter()
                .map(|e| (e.location, e.condition.code()))
                .collect(),
            other => panic!("not refused: {other:?}"),
        }
    };
    let head = "MSH|^~\\&|PAS|RJZ|GW|OB|202607141018||ADT^A01|R1|P|2.4\rEVN|A01|202607141018\r";
    assert_eq!(
        conditions(&format!(
            "{head}PID|1||K1^^^RJZ^MR~9990000019^^^NHS^NH||PAGE^Ann||19800230|X||||||||||||||||||||||Q\r\
             PV1|1|Z|ED^^^RJZ30||||||||||||||||\r"
        )),
        [
            ("PID-3[2].1".to_string(), 102),
            ("PID-7".to_string(), 102),
            ("PID-8".to_string(), 103),
            ("PID-30".to_string(), 103),
            ("PV1-19".to_string(), 101),
            ("PV1-2".to_string(), 103),
        ]
    );
    assert_eq!(
        conditions(
            "MSH|^~\\&|PAS|RJZ|GW|OB|202607141018||ADT^A40|R2|P|2.4\rEVN|A40|202607141018\r\
             PID|1||K1^^^RJZ^MR\rMRG|K2^^^RJZ^MR\rPID|1||K3^^^RJZ^MR\rMRG|K4^^^RJZ^MR\r"
        ),
        [("MRG[2]".to_string(), 100)]
    );
    let mut found = conditions(&format!(
        "{head}PID|1||9990000018^^^NHS^NH~9990000026^^^NHS^NH||PAGE^Ann|||||||||||||||||||||||||||XX\r\
         PD1|||BROMLEY COMMON PRACTICE\r"
    ));
    found.sort();
    assert_eq!(
        found,
        [
            ("PD1-3.3".to_string(), 101),
            ("PID-32".to_string(), 103),
            ("PID-3[2].1".to_string(), 102),
            ("PV1".to_string(), 100),
        ]
    );
}

/// The visit check reads a stored Encounter's subject in whatever form a
/// REST client wrote it.
#[test]
fn a_patient_reference_is_read_in_any_form() {
    use super::ingest::patient_id_in;
    for (reference, id) in [
        ("Patient/p1", Some("p1")),
        ("https://gw.example.nhs.uk/fhir/Patient/p1", Some("p1")),
        ("Patient/p1/_history/3", Some("p1")),
        (
            "https://gw.example.nhs.uk/fhir/Patient/p1/_history/3",
            Some("p1"),
        ),
        ("Group/g1", None),
        ("urn:uuid:9b1e", None),
        ("Patient/", None),
        ("MyPatient/p1", None),
    ] {
        assert_eq!(patient_id_in(reference), id, "{reference}");
    }
}
