//! Statement shapes: a PostgreSQL text with its literals taken out, so that texts which differ
//! only in the values they carry can share one analysis.
//!
//! Clients that put values into the text itself (pgbench `-M simple`, psycopg2, PDO with emulated
//! prepares, many ORMs) send a new text for nearly every execution, and a cache keyed by text
//! then misses every time: each execution pays for PostgreSQL's grammar, the tree and the walk.
//! Keyed by shape instead, `... WHERE aid = 1` and `... WHERE aid = 2` meet in one entry.
//!
//! Sharing is only sound where the literal values cannot change the analysis, and this module
//! alone cannot know that; the safety rests on three parts:
//! 1. [`postgres`] (here) recognises literals only in the part of the lexical grammar it reads
//!    exactly as PostgreSQL does with `standard_conforming_strings = on` (the only setting the
//!    gateway analyses under): plain `'...'` strings and decimal numbers, with comments, quoted
//!    identifiers and parameters stepped over. Anything else that could change how the rest of
//!    the text is tokenised (a dollar quote, an `E'...'` or other prefixed string, a stray marker
//!    byte) gives no shape at all. Each literal becomes a marker carrying its token class (string,
//!    integer, other number), because the class, unlike the value, can change the grammar's path.
//! 2. The first text of a shape is analysed in full, and the analysis may be shared only if every
//!    literal the shape took out sits exactly where PostgreSQL's parser put an `A_Const` node (so
//!    the literal is a whole constant token, and not, say, a file name, a function body, an option
//!    or half of a concatenated string).
//! 3. ... and if the walker never looked inside an `A_Const` (it does so to fold `WHERE 1 = 1`) or
//!    re-read the text itself (function bodies).
//!
//! Two texts with the same shape are then byte-identical outside their literals, tokenised alike,
//! and parsed into trees that differ only inside `A_Const` nodes, which the shared analysis did
//! not depend on. pg_query's fingerprint ignores constants too, so it is shared as well.
//!
//! Written by hand: pg_query's own scanner would answer exactly but costs a C call, a protobuf
//! encoding and its decoding per text, a good part of what the shape is there to save.
//!
//! MySQL texts get their shape from sqlparser's tokenizer instead (`mysql::shape`): the lexer
//! that MySQL analysis parses with, so no second reading of the grammar is needed there.

/// A statement text with its literals replaced by markers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    /// The text with every literal replaced by [`MARK`] and its class (`s`, `i` or `n`).
    pub(crate) key: String,
    /// Byte offsets, in the original text, of the literals taken out (in order).
    pub(crate) literals: Vec<usize>,
}

impl Shape {
    /// The shape as text (markers are the byte 0x01 followed by `s`, `i` or `n`).
    pub fn key(&self) -> &str {
        &self.key
    }
}

/// Starts a literal's marker in [`Shape::key`]. A text that holds this byte gets no shape, so a
/// marker always means a literal.
const MARK: u8 = 0x01;

/// PostgreSQL's `ident_start`: letters, `_` and every byte of a multi-byte character.
const IDENT_START: u8 = 1;
/// PostgreSQL's `ident_cont`: `ident_start`, digits and `$`.
const IDENT_CONT: u8 = 2;
/// Bytes that may continue a numeric token (or the junk after one, which PostgreSQL rejects):
/// digits, letters (exponents, `0x`, trailing junk), `_` (digit separators), `.` and multi-byte
/// characters. `$` is left out: after a number it starts a new token.
const NUMBER_CONT: u8 = 4;

/// The classes above for each byte, looked up once per byte of the text.
const CLASSES: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0usize;
    while b < 256 {
        let c = b as u8;
        let start = c.is_ascii_alphabetic() || c == b'_' || c >= 0x80;
        let mut class = 0;
        if start {
            class |= IDENT_START | IDENT_CONT | NUMBER_CONT;
        }
        if c.is_ascii_digit() {
            class |= IDENT_CONT | NUMBER_CONT;
        }
        if c == b'$' {
            class |= IDENT_CONT;
        }
        if c == b'.' {
            class |= NUMBER_CONT;
        }
        table[b] = class;
        b += 1;
    }
    table
};

fn is(b: u8, class: u8) -> bool {
    CLASSES[usize::from(b)] & class != 0
}

fn ident_cont(b: u8) -> bool {
    is(b, IDENT_CONT)
}

fn number_cont(b: u8) -> bool {
    is(b, NUMBER_CONT)
}

/// Where the quoted token starting at `start` (a `'` string or a `"` identifier) ends: after its
/// closing quote, a doubled quote inside it being one character. `None` when it never closes.
fn quoted_end(b: &[u8], start: usize) -> Option<usize> {
    let quote = *b.get(start)?;
    let mut i = start + 1;
    loop {
        match b.get(i) {
            None => return None,
            Some(&c) if c == quote && b.get(i + 1) == Some(&quote) => i += 2,
            Some(&c) if c == quote => return Some(i + 1),
            Some(_) => i += 1,
        }
    }
}

/// The shape of a PostgreSQL statement text, read as with `standard_conforming_strings = on`;
/// `None` when the text holds no literal this module takes out, or holds something it does not
/// read exactly as PostgreSQL's lexer does.
pub(crate) fn postgres(sql: &str) -> Option<Shape> {
    let b = sql.as_bytes();
    // A NUL ends a text on the wire and is refused by the analysis: no shape either. One pass
    // without early exit: fewer instructions than two memchr calls on the short texts this is
    // for (callgrind: about 170 fewer per pgbench select).
    if b.iter()
        .fold(false, |found, &c| found | (c == MARK) | (c == 0))
    {
        return None;
    }
    let mut key: Vec<u8> = Vec::with_capacity(b.len() + 8);
    let mut literals = Vec::new();
    // Text up to here is in `key`; what follows it, up to the next literal, is copied in one go.
    let mut copied = 0;
    let mut literal =
        |key: &mut Vec<u8>, copied: &mut usize, start: usize, end: usize, class: u8| {
            key.extend_from_slice(&b[*copied..start]);
            key.extend_from_slice(&[MARK, class]);
            literals.push(start);
            *copied = end;
        };
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        let next = b.get(i + 1).copied();
        match c {
            b'\'' => {
                // Glued to a word or `&`: E'..', B'..', X'..', N'..', U&'..' and friends, whose
                // escapes this module does not read.
                if i > 0 && (ident_cont(b[i - 1]) || b[i - 1] == b'&') {
                    return None;
                }
                let start = i;
                i = quoted_end(b, i)?;
                literal(&mut key, &mut copied, start, i, b's');
            }
            b'"' => i = quoted_end(b, i)?,
            b'-' if next == Some(b'-') => {
                while b.get(i).is_some_and(|&c| c != b'\n' && c != b'\r') {
                    i += 1;
                }
            }
            b'/' if next == Some(b'*') => {
                // Block comments nest in PostgreSQL.
                let mut depth = 0usize;
                loop {
                    match (b.get(i), b.get(i + 1)) {
                        (Some(b'/'), Some(b'*')) => {
                            depth += 1;
                            i += 2;
                        }
                        (Some(b'*'), Some(b'/')) => {
                            depth -= 1;
                            i += 2;
                            if depth == 0 {
                                break;
                            }
                        }
                        (Some(_), _) => i += 1,
                        (None, _) => return None,
                    }
                }
            }
            b'$' => {
                // At the start of a token (identifiers consume their own `$`): a parameter, or
                // a dollar quote, which is not read here.
                if !next.is_some_and(|n| n.is_ascii_digit()) {
                    return None;
                }
                i += 1;
                while b.get(i).is_some_and(u8::is_ascii_digit) {
                    i += 1;
                }
            }
            b'0'..=b'9' => {
                let start = i;
                let after_dot = i > 0 && b[i - 1] == b'.';
                while b.get(i).is_some_and(u8::is_ascii_digit) {
                    i += 1;
                }
                let mut fraction = false;
                if b.get(i) == Some(&b'.') && b.get(i + 1).is_some_and(u8::is_ascii_digit) {
                    fraction = true;
                    i += 1;
                    while b.get(i).is_some_and(u8::is_ascii_digit) {
                        i += 1;
                    }
                }
                if after_dot || b.get(i).copied().is_some_and(number_cont) {
                    // `.5`, `1e5`, `0x1f`, `1_000`, `1.`, `1..2`: kept as written.
                    while b.get(i).copied().is_some_and(number_cont) {
                        i += 1;
                    }
                } else {
                    let class = if !fraction && sql[start..i].parse::<i32>().is_ok() {
                        b'i'
                    } else {
                        // Too big for an integer constant: PostgreSQL reads it as numeric.
                        b'n'
                    };
                    literal(&mut key, &mut copied, start, i, class);
                }
            }
            c if is(c, IDENT_START) => {
                while b.get(i).copied().is_some_and(ident_cont) {
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    if literals.is_empty() {
        return None;
    }
    key.extend_from_slice(&b[copied..]);
    // Only ASCII was replaced, by ASCII, so the key is still UTF-8.
    let key = String::from_utf8(key).ok()?;
    Some(Shape { key, literals })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(sql: &str) -> Option<String> {
        postgres(sql).map(|s| s.key.replace('\u{1}', "?"))
    }

    #[test]
    fn literals_are_taken_out_with_their_class() {
        let s = postgres("SELECT abalance FROM pgbench_accounts WHERE aid = 48213;").unwrap();
        assert_eq!(
            s.key,
            "SELECT abalance FROM pgbench_accounts WHERE aid = \u{1}i;"
        );
        assert_eq!(s.literals, [50]);
        assert_eq!(
            key("select * from t where a = 'x''y' and b = 1.5 and c = 99999999999 and d = 7"),
            Some("select * from t where a = ?s and b = ?n and c = ?n and d = ?i".into())
        );
        assert_eq!(
            key("SELECT 1"),
            key("SELECT 2"),
            "the same shape for different values"
        );
        assert_ne!(key("SELECT 1"), key("SELECT '1'"));
        assert_ne!(key("SELECT 1"), key("SELECT 1.0"));
    }

    #[test]
    fn offsets_point_at_each_literal() {
        let sql = "UPDATE t SET a = 'v', b = 42 WHERE id = 7";
        let s = postgres(sql).unwrap();
        let starts: Vec<&str> = s.literals.iter().map(|&o| &sql[o..o + 1]).collect();
        assert_eq!(starts, ["'", "4", "7"]);
    }

    #[test]
    fn comments_quoted_identifiers_and_parameters_are_kept_as_written() {
        assert_eq!(
            key("select \"it's\" -- don't\n, 1 /* a /* nested 'x' */ 2 */ from t where x = $1"),
            Some(
                "select \"it's\" -- don't\n, ?i /* a /* nested 'x' */ 2 */ from t where x = $1"
                    .into()
            )
        );
        // Digits inside words and after a dot are not literals.
        assert_eq!(
            key("select t1.c2, x$1 from t1 where a = 3"),
            Some("select t1.c2, x$1 from t1 where a = ?i".into())
        );
        assert_eq!(
            key("select .5, 1e5, 0x1f, 1_000, 1., 3"),
            Some("select .5, 1e5, 0x1f, 1_000, 1., ?i".into())
        );
    }

    #[test]
    fn texts_read_differently_get_no_shape() {
        for sql in [
            "select E'a\\'b' from t where a = 1",
            "select e'x', 1",
            "select B'101', 1",
            "select U&'d\\0061t', 1",
            "select N'x', 1",
            "select $$a'b$$, 1",
            "select $tag$ ' $tag$, 1",
            "do $$ begin end $$",
            "select 'unterminated",
            "select \"unterminated",
            "select 1 /* unterminated",
            "select '\u{1}s', 1",
            "select 1\u{1}",
            "select 1, 'a\u{0}b'",
        ] {
            assert_eq!(postgres(sql), None, "{sql}");
        }
        // No literal at all: the text is its own key.
        assert_eq!(postgres("select a from t"), None);
    }

    #[test]
    fn every_prefix_gets_a_shape_or_none_and_offsets_stay_inside() {
        let sql = "select 'a''b', \"q\"\"x\", 1.5, $1 /* /* */ */ -- c\n from t where é = 7;";
        let mut shaped = 0;
        for end in 0..=sql.len() {
            let Some(prefix) = sql.get(..end) else {
                continue;
            };
            if let Some(shape) = postgres(prefix) {
                shaped += 1;
                assert!(shape.literals.windows(2).all(|w| w[0] < w[1]), "{prefix}");
                assert!(shape
                    .literals
                    .iter()
                    .all(|&o| prefix.is_char_boundary(o) && o < prefix.len()));
            }
        }
        assert!(shaped > 10, "only {shaped} prefixes had a shape");
    }

    // -----------------------------------------------------------------------------------------
    // The analysis side: what may be shared, and that shared analyses hold for the whole shape.
    // -----------------------------------------------------------------------------------------

    use crate::analysis::{analyze, analyze_shaped, Dialect, ReadingContext};

    fn pg() -> ReadingContext {
        ReadingContext::new(Dialect::Postgres)
    }

    /// A small deterministic generator (xorshift), so failures reproduce.
    struct Rng(u64);

    impl Rng {
        fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            from[usize::try_from(self.0 % from.len() as u64).unwrap_or(0)]
        }
    }

    /// Another text of `shape`: each marker replaced by a literal of its class from `rng`.
    fn another_text(shape: &Shape, rng: &mut Rng) -> String {
        const STRINGS: &[&str] = &[
            "''",
            "'x'",
            "'1=1'",
            "'it''s'",
            "'write'",
            "'; drop table t; --'",
            "'*/ drop table t /*'",
            "'$$'",
            "'é😀'",
            "'\\'",
            "'\\'''",
            "'vault.secrets'",
            "'true'",
            "'  '",
            "'pg_sleep(10)'",
        ];
        const INTEGERS: &[&str] = &["0", "1", "42", "007", "2147483647"];
        const NUMBERS: &[&str] = &["1.5", "0.0", "2147483648", "99999999999999999999", "3.25"];
        let mut parts = shape.key.split('\u{1}');
        let mut out = parts.next().unwrap_or("").to_owned();
        for part in parts {
            let (class, rest) = part.split_at(1);
            out.push_str(match class {
                "s" => rng.pick(STRINGS),
                "i" => rng.pick(INTEGERS),
                _ => rng.pick(NUMBERS),
            });
            out.push_str(rest);
        }
        out
    }

    #[test]
    fn a_shared_analysis_holds_for_every_text_of_its_shape() {
        let shareable = [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;",
            "UPDATE pgbench_accounts SET abalance = abalance + 3 WHERE aid = 5",
            "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 2, 3, 4, CURRENT_TIMESTAMP)",
            "SELECT * FROM users WHERE email = 'a@b.c' AND created > '2020-01-01'::date LIMIT 10 OFFSET 20",
            "DELETE FROM sessions WHERE id IN (1, 2, 3)",
            "DELETE FROM sessions WHERE id = 1 AND 'x' = kind",
            "SELECT name FROM t WHERE id = 1; DELETE FROM u WHERE v = 'w'",
            "SET work_mem = '64MB'",
            "SELECT set_config('application_name', 'x', false)",
            "SELECT interval '1 day' + now(), pg_sleep(1.5)",
            "WITH x AS (SELECT 1 AS a) SELECT a FROM x WHERE a > 0",
            "select * from t where a = 'x' /* comment 'y' */ -- 'z'\n and b = 2",
            "SELECT * FROM vault.secrets WHERE id = 3",
            "SELECT \"weird\"\"name\" FROM s.\"T\" WHERE c = $1 AND d = 'lit'",
        ];
        let mut rng = Rng(0x2545_F491_4F6C_DD1D);
        for sql in shareable {
            let shape = super::postgres(sql).unwrap_or_else(|| panic!("no shape for {sql:?}"));
            let (first, shared) = analyze_shaped(sql, &pg(), &shape);
            assert!(shared, "expected {sql:?} to be shareable: {first:?}");
            assert!(first.failure.is_none(), "{sql:?}: {first:?}");
            for _ in 0..25 {
                let other = another_text(&shape, &mut rng);
                let other_shape =
                    super::postgres(&other).unwrap_or_else(|| panic!("no shape for {other:?}"));
                assert_eq!(other_shape.key, shape.key, "{other:?} has another shape");
                assert_eq!(
                    analyze(&other, &pg()),
                    first,
                    "{other:?} is not analysed as {sql:?}, whose analysis it would share"
                );
            }
        }
    }

    #[test]
    fn the_tree_corpus_shares_only_what_holds_for_the_whole_shape() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut shared_count = 0;
        for sql in crate::analysis::postgres::tests::CORPUS {
            let Some(shape) = super::postgres(sql) else {
                continue;
            };
            let (first, shared) = analyze_shaped(sql, &pg(), &shape);
            if !shared {
                continue;
            }
            shared_count += 1;
            for _ in 0..10 {
                let other = another_text(&shape, &mut rng);
                assert_eq!(analyze(&other, &pg()), first, "{other:?} against {sql:?}");
            }
        }
        assert!(
            shared_count >= 10,
            "only {shared_count} corpus statements were shareable"
        );
    }

    #[test]
    fn analyses_that_may_depend_on_a_literal_are_not_shared() {
        let not_shareable = [
            // The filter is folded from constants: 1 = 1 is no filter, 1 = 2 is one.
            "DELETE FROM t WHERE 1 = 1",
            "UPDATE t SET a = 1 WHERE 'x' = 'x'",
            "DELETE FROM t WHERE 1 = 1 OR id = 2",
            "DELETE FROM t WHERE NOT 0 = 1",
            // Literals that are not constants in the tree: file names, bodies, options, names.
            "COPY t TO '/tmp/x'",
            "COPY (SELECT 1) TO '/tmp/x'",
            "DO 'BEGIN PERFORM 1; END'",
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
            "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS 'BEGIN RETURN 1; END'",
            "EXPLAIN (ANALYZE 'off') DELETE FROM t",
            "EXPLAIN (ANALYZE 0) DELETE FROM t",
            "FETCH 5 FROM c",
            "CREATE ROLE r PASSWORD 'x'",
            "COMMENT ON TABLE t IS 'x'",
            "ALTER SYSTEM SET work_mem = 5",
            "LOAD 'plpgsql'",
            // One constant in the tree, two literals in the text.
            "SELECT 'a'\n'b' FROM t",
            // The constant starts at the sign.
            "SELECT -5",
        ];
        for sql in not_shareable {
            if let Some(shape) = super::postgres(sql) {
                let (analysis, shared) = analyze_shaped(sql, &pg(), &shape);
                assert!(!shared, "{sql:?} must not be shared: {analysis:?}");
                assert_eq!(analysis, analyze(sql, &pg()), "{sql:?}");
            }
        }
        // A function body is parsed on its own, and its constants sit at offsets into the body:
        // one placed where the body itself starts in the text must not vouch for the body.
        let prefix = "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS '";
        let body = format!("SELECT {}1", " ".repeat(prefix.len() - 1 - "SELECT ".len()));
        let crafted = format!("{prefix}{body}'");
        let shape = super::postgres(&crafted).unwrap();
        assert_eq!(shape.literals, [prefix.len() - 1]);
        let (analysis, shared) = analyze_shaped(&crafted, &pg(), &shape);
        assert!(
            !shared,
            "a nested parse vouched for its own text: {analysis:?}"
        );

        // Why it matters: the same shape, different facts.
        let (trivial, present) = (
            analyze("DELETE FROM t WHERE 1 = 1", &pg()),
            analyze("DELETE FROM t WHERE 1 = 2", &pg()),
        );
        assert_eq!(
            super::postgres("DELETE FROM t WHERE 1 = 1").map(|s| s.key),
            super::postgres("DELETE FROM t WHERE 1 = 2").map(|s| s.key)
        );
        assert_ne!(trivial, present);
    }

    #[test]
    fn the_fingerprint_ignores_literal_values_and_classes() {
        let a = analyze("SELECT * FROM t WHERE a = 1 AND b = 'x' LIMIT 5", &pg());
        let b = analyze(
            "SELECT * FROM t WHERE a = 2.5 AND b = 'yy' LIMIT 99999999999",
            &pg(),
        );
        assert!(a.fingerprint.is_some());
        assert_eq!(a.fingerprint, b.fingerprint);
    }
}
