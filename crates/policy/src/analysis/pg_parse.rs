//! PostgreSQL's grammar through libpg_query's C function, called directly.
//!
//! `pg_query::parse` calls the same function, but drops the error's cursor position, and after
//! decoding the tree walks it once more to build a summary (tables, functions, aliases, filter
//! columns, in hash sets) that the walker does not use: 4.5% of a cold analysis (callgrind). Here
//! the tree is only decoded, and a grammar error keeps the position PostgreSQL itself reports,
//! so the gateway's 42601 points where the server's would without searching for it.
//!
//! The declarations mirror `pg_query.h` of the libpg_query that pg_query 18.1 bundles and links
//! (`PgQueryError`, `PgQueryProtobuf`, `PgQueryProtobufParseResult`); a test compares this path
//! with `pg_query::parse` on the tree corpus, so an upgrade that changes them fails there.

use std::ffi::{c_char, c_int, CStr, CString};

use pg_query::protobuf;
use prost::Message as _;

#[repr(C)]
struct PgQueryError {
    message: *mut c_char,
    funcname: *mut c_char,
    filename: *mut c_char,
    lineno: c_int,
    cursorpos: c_int,
    context: *mut c_char,
}

#[repr(C)]
struct PgQueryProtobuf {
    len: usize,
    data: *mut c_char,
}

#[repr(C)]
struct PgQueryProtobufParseResult {
    parse_tree: PgQueryProtobuf,
    stderr_buffer: *mut c_char,
    error: *mut PgQueryError,
}

#[repr(C)]
struct PgQueryPlpgsqlParseResult {
    plpgsql_funcs: *mut c_char,
    error: *mut PgQueryError,
}

extern "C" {
    fn pg_query_parse_plpgsql(input: *const c_char) -> PgQueryPlpgsqlParseResult;
    fn pg_query_free_plpgsql_parse_result(result: PgQueryPlpgsqlParseResult);
    fn pg_query_parse_protobuf_opts(
        input: *const c_char,
        parser_options: c_int,
    ) -> PgQueryProtobufParseResult;
    fn pg_query_free_protobuf_parse_result(result: PgQueryProtobufParseResult);
}

/// Why a text was not parsed.
#[derive(Debug)]
pub(super) enum ParseError {
    /// libpg_query refused the text: PostgreSQL's grammar, or one of libpg_query's own limits.
    Parser {
        /// The message, worded as PostgreSQL words it.
        message: String,
        /// PostgreSQL's error cursor: 1-based, in characters; 0 when there is none.
        cursor: usize,
    },
    /// The text holds a NUL byte, or the tree could not be decoded (prost stops at 100 nested
    /// messages).
    Unreadable(String),
}

/// Parses `sql` with PostgreSQL's grammar in mode `options`.
pub(super) fn parse(
    sql: &str,
    options: pg_query::ParserOptions,
) -> Result<protobuf::ParseResult, ParseError> {
    let input = CString::new(sql).map_err(|e| ParseError::Unreadable(e.to_string()))?;
    // SAFETY: `input` is a NUL-terminated string that outlives the call. The result is read only
    // before it is freed, exactly once, below; every pointer in it is checked for null first.
    let result = unsafe { pg_query_parse_protobuf_opts(input.as_ptr(), options.bits()) };
    let outcome = if result.error.is_null() {
        let data: &[u8] = if result.parse_tree.data.is_null() {
            &[]
        } else {
            // SAFETY: libpg_query hands back `len` bytes at `data`, alive until freed below.
            unsafe {
                std::slice::from_raw_parts(
                    result.parse_tree.data.cast::<u8>(),
                    result.parse_tree.len,
                )
            }
        };
        protobuf::ParseResult::decode(data).map_err(|e| ParseError::Unreadable(e.to_string()))
    } else {
        // SAFETY: a non-null error points at a PgQueryError alive until freed below.
        let error = unsafe { &*result.error };
        let message = if error.message.is_null() {
            String::new()
        } else {
            // SAFETY: a non-null message is a NUL-terminated string owned by the result.
            unsafe { CStr::from_ptr(error.message) }
                .to_string_lossy()
                .into_owned()
        };
        Err(ParseError::Parser {
            message,
            cursor: usize::try_from(error.cursorpos).unwrap_or(0),
        })
    };
    // SAFETY: the result came from `pg_query_parse_protobuf_opts` and is freed once; nothing
    // borrowed from it outlives this point (`outcome` owns copies).
    unsafe { pg_query_free_protobuf_parse_result(result) };
    outcome
}

/// Parses a `CREATE FUNCTION ... LANGUAGE plpgsql` text with PL/pgSQL's grammar, as
/// `pg_query::parse_plpgsql` does, into the JSON libpg_query writes for it.
///
/// libpg_query 18.1 writes malformed JSON for every trigger function: the implicit `TG_*`
/// variables are "promise" datums its JSON writer does not know, and each leaves a bare `{}}`
/// in the `datums` list (`pg_query_json_plpgsql.c`, `dump_function`), so `pg_query`'s own
/// call fails with "Error parsing JSON" and the statement would be refused as unreadable. Here
/// the text is read as written first; only when it is not JSON, those empty entries are taken
/// out of the `datums` list and it is read again. A repair that removed anything else would
/// leave unbalanced braces and fail to parse, so the result is either the function as
/// libpg_query read it or an error.
pub(super) fn parse_plpgsql(sql: &str) -> Result<serde_json::Value, ParseError> {
    let input = CString::new(sql).map_err(|e| ParseError::Unreadable(e.to_string()))?;
    // SAFETY: as in `parse`: a NUL-terminated input that outlives the call; the result is read
    // before it is freed, once; pointers are checked for null first.
    let result = unsafe { pg_query_parse_plpgsql(input.as_ptr()) };
    let outcome = if result.error.is_null() {
        let raw = if result.plpgsql_funcs.is_null() {
            String::from("[]")
        } else {
            // SAFETY: a non-null pointer is a NUL-terminated string owned by the result.
            unsafe { CStr::from_ptr(result.plpgsql_funcs) }
                .to_string_lossy()
                .into_owned()
        };
        read_plpgsql_json(&raw)
    } else {
        // SAFETY: a non-null error points at a PgQueryError alive until freed below.
        let error = unsafe { &*result.error };
        let message = if error.message.is_null() {
            String::new()
        } else {
            // SAFETY: a non-null message is a NUL-terminated string owned by the result.
            unsafe { CStr::from_ptr(error.message) }
                .to_string_lossy()
                .into_owned()
        };
        Err(ParseError::Parser {
            message,
            cursor: usize::try_from(error.cursorpos).unwrap_or(0),
        })
    };
    // SAFETY: the result came from `pg_query_parse_plpgsql` and is freed once; `outcome` owns
    // copies of everything read from it.
    unsafe { pg_query_free_plpgsql_parse_result(result) };
    outcome
}

/// The JSON of a PL/pgSQL parse, with the empty datum entries of trigger functions taken out
/// when it does not read as written (see [`parse_plpgsql`]).
fn read_plpgsql_json(raw: &str) -> Result<serde_json::Value, ParseError> {
    let first = match serde_json::from_str(raw) {
        Ok(v) => return Ok(v),
        Err(e) => e,
    };
    let mut repaired = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(at) = rest.find("\"datums\":[") {
        let open = at + "\"datums\":[".len();
        repaired.push_str(&rest[..open]);
        rest = &rest[open..];
        // The list ends where the function's `action` begins.
        let end = rest.find("],\"action\":").unwrap_or(rest.len());
        let list = rest[..end]
            .replace("{}},", "")
            .replace(",{}}", "")
            .replace("{}}", "");
        repaired.push_str(&list);
        rest = &rest[end..];
    }
    repaired.push_str(rest);
    serde_json::from_str(&repaired)
        .map_err(|_| ParseError::Unreadable(format!("Error parsing JSON: {first}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_functions_read_despite_libpg_query_s_json() {
        let trigger = "CREATE FUNCTION f() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.v := (SELECT 1); RETURN NEW; END $$";
        assert!(
            pg_query::parse_plpgsql(trigger).is_err(),
            "pg_query reads trigger functions itself now: the repair in parse_plpgsql can go"
        );
        let tree = parse_plpgsql(trigger).expect("repaired");
        let text = tree.to_string();
        assert!(text.contains("SELECT 1"), "{text}");
        // Functions that were fine read exactly as pg_query reads them.
        let plain = "CREATE FUNCTION g() RETURNS int LANGUAGE plpgsql AS $$ DECLARE x int := 2; BEGIN RETURN x; END $$";
        assert_eq!(
            parse_plpgsql(plain).unwrap(),
            pg_query::parse_plpgsql(plain).unwrap()
        );
        // Grammar errors stay errors.
        assert!(matches!(
            parse_plpgsql(
                "CREATE FUNCTION h() RETURNS void LANGUAGE plpgsql AS $$ BEGIN RETURN 1; END $$"
            ),
            Err(ParseError::Parser { .. })
        ));
        // Broken JSON that is not the known defect stays unreadable.
        assert!(read_plpgsql_json(r#"[{"a":{}}"#).is_err());
    }

    #[test]
    fn the_ffi_path_reads_what_pg_query_reads() {
        for sql in super::super::postgres::tests::CORPUS {
            let ours = parse(sql, pg_query::ParserOptions::DEFAULT).expect(sql);
            let theirs = pg_query::parse(sql, pg_query::ParserOptions::DEFAULT).expect(sql);
            assert_eq!(ours, theirs.protobuf, "{sql}");
        }
        for sql in ["selec 1", "SELECT 'x", "SELECT (1"] {
            let theirs = pg_query::parse(sql, pg_query::ParserOptions::DEFAULT).unwrap_err();
            match parse(sql, pg_query::ParserOptions::DEFAULT) {
                Err(ParseError::Parser { message, cursor }) => {
                    assert_eq!(theirs, pg_query::Error::Parse(message), "{sql}");
                    assert!(cursor > 0, "{sql}: no cursor");
                }
                other => panic!("{sql}: {other:?}"),
            }
        }
        // The cursor counts characters from 1, as PostgreSQL's does.
        match parse("SELECT 'é€', )", pg_query::ParserOptions::DEFAULT) {
            Err(ParseError::Parser { cursor, .. }) => assert_eq!(cursor, 14),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse("SELECT 1\0", pg_query::ParserOptions::DEFAULT),
            Err(ParseError::Unreadable(_))
        ));
    }
}
