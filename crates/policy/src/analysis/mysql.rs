//! MySQL and MariaDB: sqlparser's MySQL dialect, adjusted to read like the server.
//!
//! - Versioned comments `/*!50000 ... */` and `/*! ... */` are read as SQL by sqlparser's MySQL
//!   dialect, as the server does; MariaDB's `/*M!100100 ... */` is turned into the same form
//!   first. The version number is ignored: the content is always analysed, which can only make a
//!   statement look stricter than a server that skips it.
//! - `#` comments, and `--` comments only when followed by whitespace, as in MySQL.
//! - sql_mode ANSI_QUOTES and NO_BACKSLASH_ESCAPES change the lexer per parse (see
//!   [`MysqlReading`]).
//! - Table and database names keep the case they were written in: whether `Users` and `users`
//!   are one table depends on the server's lower_case_table_names, which the statement text
//!   cannot tell. Rules should match MySQL object names case-insensitively where that matters.

use std::any::TypeId;
use std::borrow::Cow;
use std::cell::Cell;
use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::Arc;

use gateway_core::masking::Lineage;

use sqlparser::ast::{
    self, BinaryOperator, Expr, FromTable, ObjectNamePart, OnInsert, Query, SetExpr, Statement,
    TableFactor, TableObject, TableWithJoins, UnaryOperator, Visit, Visitor,
};
use sqlparser::dialect::{BindPlaceholderStyle, Dialect as SqlDialect, MySqlDialect};
use sqlparser::keywords::Keyword;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::{Location, Token, TokenWithSpan, Tokenizer};

mod routines;

use super::filter::{self, Const};
use super::mysql_lineage;
use super::{failed, Collector, ReadingContext, Shape};
use crate::facts::{Analysis, Class, FailureKind, Filter, ObjectName};

/// sqlparser's MySQL dialect with the lexing switches of the session's sql_mode. It keeps the
/// MySQL dialect's identity, so every MySQL-specific rule of the parser still applies.
#[derive(Debug, Default)]
struct MysqlReading {
    base: MySqlDialect,
    ansi_quotes: bool,
    no_backslash_escapes: bool,
}

macro_rules! delegate {
    ($($name:ident),* $(,)?) => {
        $(fn $name(&self) -> bool { self.base.$name() })*
    };
}

impl SqlDialect for MysqlReading {
    fn dialect(&self) -> TypeId {
        TypeId::of::<MySqlDialect>()
    }
    fn is_delimited_identifier_start(&self, ch: char) -> bool {
        ch == '`' || (self.ansi_quotes && ch == '"')
    }
    fn supports_string_literal_backslash_escape(&self) -> bool {
        !self.no_backslash_escapes
    }
    fn supports_string_literal_table_alias(&self, explicit: bool) -> bool {
        self.base.supports_string_literal_table_alias(explicit)
    }
    fn is_identifier_start(&self, ch: char) -> bool {
        self.base.is_identifier_start(ch)
    }
    fn is_identifier_part(&self, ch: char) -> bool {
        self.base.is_identifier_part(ch)
    }
    fn identifier_quote_style(&self, identifier: &str) -> Option<char> {
        self.base.identifier_quote_style(identifier)
    }
    fn ordered_bind_placeholder_style(&self) -> Option<BindPlaceholderStyle> {
        self.base.ordered_bind_placeholder_style()
    }
    fn parse_infix(
        &self,
        parser: &mut Parser,
        expr: &Expr,
        precedence: u8,
    ) -> Option<Result<Expr, ParserError>> {
        self.base.parse_infix(parser, expr, precedence)
    }
    fn parse_statement(&self, parser: &mut Parser) -> Option<Result<Statement, ParserError>> {
        self.base.parse_statement(parser)
    }
    fn is_table_factor_alias(&self, explicit: bool, kw: &Keyword, parser: &mut Parser) -> bool {
        self.base.is_table_factor_alias(explicit, kw, parser)
    }
    fn get_next_precedence(&self, parser: &Parser) -> Option<Result<u8, ParserError>> {
        self.base.get_next_precedence(parser)
    }
    delegate!(
        supports_string_literal_concatenation,
        ignores_wildcard_escapes,
        supports_numeric_prefix,
        supports_literal_prefix_in_qualified_name,
        supports_bitwise_shift_operators,
        supports_singular_value_keyword,
        supports_multiline_comment_hints,
        require_interval_qualifier,
        supports_limit_comma,
        supports_create_table_select,
        supports_insert_set,
        supports_user_host_grantee,
        supports_table_hints,
        requires_single_line_comment_whitespace,
        supports_hash_comment,
        supports_match_against,
        supports_select_modifiers,
        supports_set_names,
        supports_comma_separated_set_assignments,
        supports_alter_column_position,
        supports_update_order_by,
        supports_data_type_signed_suffix,
        supports_data_type_zerofill_suffix,
        supports_cross_join_constraint,
        supports_double_ampersand_operator,
        supports_binary_kw_as_cast,
        supports_table_partitions,
        supports_comment_optimizer_hint,
        supports_constraint_keyword_without_name,
        supports_key_column_option,
        supports_group_by_with_modifier,
        supports_left_associative_joins_without_parens,
    );
}

fn reading(ctx: &ReadingContext) -> MysqlReading {
    MysqlReading {
        base: MySqlDialect {},
        ansi_quotes: ctx.ansi_quotes,
        no_backslash_escapes: ctx.no_backslash_escapes,
    }
}

/// The text as it is read: MariaDB executes `/*M!NNNNNN ... */` like `/*!...*/`. Same length, so
/// positions hold.
fn reading_text(sql: &str) -> Cow<'_, str> {
    if sql.contains("/*M!") || sql.contains("/*m!") {
        Cow::Owned(sql.replace("/*M!", " /*!").replace("/*m!", " /*!"))
    } else {
        Cow::Borrowed(sql)
    }
}

/// Analyses a MySQL statement text.
pub(super) fn analyze(sql: &str, ctx: &ReadingContext) -> Analysis {
    analyze_with(sql, ctx, None).0
}

/// [`analyze`], for a text whose [`shape`] took out literals at `literals`: also says whether the
/// analysis holds for every text of that shape (see `analysis::shape`). It does when the text
/// parsed as a whole, each literal taken out is a whole value in the tree (`Expr::Value`, not a
/// type's length, a name or half of a concatenation), and no fact was drawn from a value (the
/// walker folds `WHERE 1 = 1`, and reads the text of `EXECUTE IMMEDIATE 'text'`).
pub(super) fn analyze_shaped(
    sql: &str,
    ctx: &ReadingContext,
    literals: &[usize],
) -> (Analysis, bool) {
    analyze_with(sql, ctx, Some(literals))
}

fn analyze_with(sql: &str, ctx: &ReadingContext, literals: Option<&[usize]>) -> (Analysis, bool) {
    let dialect = reading(ctx);
    let text = reading_text(sql);
    let walker = Walker::new(ctx);
    match Parser::parse_sql(&dialect, &text) {
        Ok(statements) => {
            let mut facts = Vec::with_capacity(statements.len());
            let mut lineages = Vec::with_capacity(statements.len());
            for stmt in &statements {
                let mut acc = Collector::default();
                walker.statement(stmt, &mut acc);
                let f = acc.finish();
                lineages.push(mysql_lineage::statement(Some(stmt), &f));
                facts.push(f);
            }
            let shareable = literals.is_some_and(|literals| {
                !walker.read_a_value.get() && values_cover(&text, &statements, literals)
            });
            let analysis = Analysis {
                statements: facts,
                failure: None,
                fingerprint: fingerprint(&dialect, &text),
                lineage: Some(Arc::new(Lineage {
                    statements: lineages,
                })),
            };
            (analysis, shareable)
        }
        Err(e) => (statement_by_statement(&dialect, &text, &walker, &e), false),
    }
}

/// Whether every offset in `literals` is where a value of the parsed `statements` starts.
fn values_cover(text: &str, statements: &[Statement], literals: &[usize]) -> bool {
    let lines = LineStarts::of(text);
    let mut values = Vec::with_capacity(literals.len());
    for stmt in statements {
        let _ = ast::visit_expressions(stmt, |e| {
            if let Expr::Value(v) = e {
                if let Some(at) = lines.offset(text, v.span.start) {
                    values.push(at);
                }
            }
            ControlFlow::<()>::Continue(())
        });
    }
    values.sort_unstable();
    literals.iter().all(|at| values.binary_search(at).is_ok())
}

/// Byte offsets of the lines of a text, to turn sqlparser's locations (1-based line and column,
/// columns in characters) into byte offsets.
struct LineStarts(Vec<usize>);

impl LineStarts {
    fn of(text: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(
            text.bytes()
                .enumerate()
                .filter(|&(_, b)| b == b'\n')
                .map(|(i, _)| i + 1),
        );
        LineStarts(starts)
    }

    fn offset(&self, text: &str, at: Location) -> Option<usize> {
        let line = usize::try_from(at.line).ok()?.checked_sub(1)?;
        let column = usize::try_from(at.column).ok()?.checked_sub(1)?;
        let start = *self.0.get(line)?;
        let rest = text.get(start..)?;
        // Over ASCII, characters are bytes.
        if rest.as_bytes().get(..column).is_some_and(<[u8]>::is_ascii) {
            return Some(start + column);
        }
        rest.char_indices().nth(column).map(|(b, _)| start + b)
    }
}

/// The shape of a MySQL text (see `analysis::shape`), read with sqlparser's own tokenizer in the
/// session's reading: the lexer the analysis parses with, so two texts of one shape are the same
/// tokens but for the values of their literals. Each literal (number, string, hex or bit string)
/// becomes a marker with its class (integer, other number, single- or double-quoted string,
/// ...); every other token, comments included, is kept whole (length-prefixed, so no two token
/// sequences meet in one key). `None` when the text has no literal or does not tokenize.
pub(super) fn shape(sql: &str, ctx: &ReadingContext) -> Option<Shape> {
    use std::fmt::Write as _;
    // Keys stay unambiguous either way (tokens are length-prefixed), but a marker then always
    // means a literal.
    if sql.contains([SHAPE_MARK, SHAPE_TOKEN]) {
        return None;
    }
    let dialect = reading(ctx);
    let text = reading_text(sql);
    // sqlparser reads a versioned comment's content with locations of its own: no shape.
    if text.contains("/*!") {
        return None;
    }
    let tokens = Tokenizer::new(&dialect, &text)
        .tokenize_with_location()
        .ok()?;
    let lines = LineStarts::of(&text);
    let mut key = String::with_capacity(text.len() + 16);
    let mut literals = Vec::new();
    for t in &tokens {
        let class = match &t.token {
            Token::EOF
            | Token::Whitespace(
                sqlparser::tokenizer::Whitespace::Space
                | sqlparser::tokenizer::Whitespace::Newline
                | sqlparser::tokenizer::Whitespace::Tab,
            ) => continue,
            Token::Number(n, long) => Some(if *long {
                'l'
            } else if n.bytes().all(|b| b.is_ascii_digit()) {
                'i'
            } else {
                'n'
            }),
            Token::SingleQuotedString(_) => Some('s'),
            Token::DoubleQuotedString(_) => Some('d'),
            Token::NationalStringLiteral(_) => Some('N'),
            Token::HexStringLiteral(_) => Some('x'),
            Token::SingleQuotedByteStringLiteral(_) => Some('b'),
            Token::DoubleQuotedByteStringLiteral(_) => Some('B'),
            _ => None,
        };
        match class {
            Some(class) => {
                let at = lines.offset(&text, t.span.start)?;
                // The location must be where such a literal starts, or the shape is not made.
                let first = text.as_bytes().get(at).copied()?;
                let starts = match class {
                    'i' | 'n' | 'l' => first.is_ascii_digit() || first == b'.',
                    's' => first == b'\'',
                    'd' => first == b'"',
                    'N' => matches!(first, b'n' | b'N'),
                    _ => matches!(first, b'x' | b'X' | b'b' | b'B' | b'0'),
                };
                if !starts {
                    return None;
                }
                key.push(SHAPE_MARK);
                key.push(class);
                literals.push(at);
            }
            None => {
                let token = t.token.to_string();
                let _ = write!(key, "{}{}:{token}", SHAPE_TOKEN, token.len());
            }
        }
    }
    (!literals.is_empty()).then_some(Shape { key, literals })
}

/// Starts a literal's marker in a MySQL shape's key; [`SHAPE_TOKEN`] starts any other token.
const SHAPE_MARK: char = '\u{1}';
const SHAPE_TOKEN: char = '\u{2}';

fn parser_message(e: &ParserError) -> String {
    match e {
        ParserError::ParserError(m) | ParserError::TokenizerError(m) => m.clone(),
        other => other.to_string(),
    }
}

/// The text did not parse as a whole. Some MySQL statements sqlparser does not know
/// (`LOAD DATA INFILE`, `SELECT ... INTO OUTFILE`, `HANDLER`, `PREPARE s FROM '...'`) are
/// recognised from their tokens, statement by statement; anything else still fails the text.
fn statement_by_statement(
    dialect: &MysqlReading,
    text: &str,
    walker: &Walker<'_>,
    first: &ParserError,
) -> Analysis {
    let message = parser_message(first);
    // sqlparser is not MySQL's own grammar: what it rejects the server may accept, so this is
    // never answered as the server's syntax error.
    let failure = || {
        failed(
            FailureKind::Unreadable,
            message.clone(),
            error_position(text, &message),
        )
    };
    let Ok(tokens) = Tokenizer::new(dialect, text).tokenize_with_location() else {
        return failure();
    };
    let mut facts = Vec::new();
    let mut lineages = Vec::new();
    let tokens: Vec<TokenWithSpan> = tokens
        .into_iter()
        .filter(|t| !matches!(t.token, Token::Whitespace(_)))
        .collect();
    for group in routines::split(&tokens) {
        let mut acc = Collector::default();
        let Some(parsed) = read_group(dialect, group, walker, &mut acc) else {
            return failure();
        };
        let f = acc.finish();
        lineages.push(mysql_lineage::statement(parsed.as_ref(), &f));
        facts.push(f);
    }
    Analysis {
        statements: facts,
        failure: None,
        fingerprint: fingerprint(dialect, text),
        lineage: Some(Arc::new(Lineage {
            statements: lineages,
        })),
    }
}

/// A fingerprint from the token stream, written here because sqlparser has none: literals become
/// `?`, a list of them one `?`, unquoted words are lower-cased, whitespace and comments are
/// dropped; the first 8 bytes of the SHA-256 of what remains, as 16 hex digits (the width of
/// pg_query's).
fn fingerprint(dialect: &MysqlReading, text: &str) -> Option<String> {
    use sha2::{Digest, Sha256};
    let tokens = Tokenizer::new(dialect, text).tokenize().ok()?;
    let mut shape: Vec<String> = Vec::with_capacity(tokens.len());
    for token in tokens {
        let word = match token {
            Token::Whitespace(_) | Token::EOF => continue,
            Token::Number(..)
            | Token::SingleQuotedString(_)
            | Token::DoubleQuotedString(_)
            | Token::NationalStringLiteral(_)
            | Token::EscapedStringLiteral(_)
            | Token::HexStringLiteral(_)
            | Token::SingleQuotedByteStringLiteral(_)
            | Token::DoubleQuotedByteStringLiteral(_)
            | Token::Placeholder(_) => "?".to_owned(),
            Token::Word(w) if w.quote_style.is_none() => w.value.to_ascii_lowercase(),
            other => other.to_string(),
        };
        // `IN (1, 2, 3)` and `IN (4)` share a shape: fold `? , ?` into `?`.
        if word == "?"
            && shape.len() >= 2
            && shape[shape.len() - 1] == ","
            && shape[shape.len() - 2] == "?"
        {
            shape.pop();
            continue;
        }
        shape.push(word);
    }
    let digest = Sha256::digest(shape.join(" ").as_bytes());
    Some(digest[..8].iter().map(|b| format!("{b:02x}")).collect())
}

/// Parses one statement's tokens; `None` unless they form exactly one statement.
fn parse_tokens(dialect: &MysqlReading, mut tokens: Vec<TokenWithSpan>) -> Option<Statement> {
    tokens.push(TokenWithSpan::wrap(Token::EOF));
    let mut parser = Parser::new(dialect).with_tokens_with_locations(tokens);
    let stmt = parser.parse_statement().ok()?;
    (parser.peek_token().token == Token::EOF).then_some(stmt)
}

fn keyword(t: Option<&TokenWithSpan>) -> String {
    match t.map(|t| &t.token) {
        Some(Token::Word(w)) if w.quote_style.is_none() => w.value.to_ascii_uppercase(),
        _ => String::new(),
    }
}

/// A possibly qualified name starting at `at`: `t`, `db.t`, `` `db`.`t` ``.
fn name_at(walker: &Walker<'_>, tokens: &[TokenWithSpan], at: usize) -> Option<ObjectName> {
    let ident = |i: usize| match tokens.get(i).map(|t| &t.token) {
        Some(Token::Word(w)) => Some(w.value.clone()),
        _ => None,
    };
    let first = ident(at)?;
    if tokens.get(at + 1).map(|t| &t.token) == Some(&Token::Period) {
        let second = ident(at + 2)?;
        return Some(ObjectName {
            schema: Some(first),
            name: second,
        });
    }
    Some(ObjectName {
        schema: walker.ctx.default_schema.clone(),
        name: first,
    })
}

/// Reads one statement's tokens (no whitespace) into `acc`: parsed by sqlparser, or recognised
/// from its tokens. `None` when it is neither (the caller fails closed); otherwise the parsed
/// statement whose result lineage masking follows, if there is one.
fn read_group(
    dialect: &MysqlReading,
    tokens: &[TokenWithSpan],
    walker: &Walker<'_>,
    acc: &mut Collector,
) -> Option<Option<Statement>> {
    if let Some(kind) = routines::routine_kind(tokens) {
        routines::create_routine(dialect, tokens, walker, acc, kind);
        return Some(None);
    }
    if let Some(stmt) = parse_tokens(dialect, tokens.to_vec()) {
        walker.statement(&stmt, acc);
        return Some(Some(stmt));
    }
    if keyword(tokens.first()) == "SET" && keyword(tokens.get(1)) == "STATEMENT" {
        return set_statement(dialect, tokens, walker, acc);
    }
    recognise(dialect, tokens, walker, acc).then_some(None)
}

/// The settings whose SET kinds fence the rest of a text (see the engine): a `SET STATEMENT`
/// changes them for its one statement only.
const READING_SETTINGS: &[&str] = &[
    "set_sql_mode",
    "set_names",
    "set_character_set_client",
    "set_charset",
    "set_character_set",
];

/// MariaDB's `SET STATEMENT var = value [, ...] FOR statement` (what MariaDB Connector/J sends for
/// `setQueryTimeout`): the statement is judged as itself, with the kind `set_statement` and the
/// `set_NAME` kinds of its settings. The server lexes the whole text under the session's
/// sql_mode before the settings apply (MariaDB 10.11: `SET STATEMENT sql_mode='ANSI_QUOTES' FOR
/// SELECT "a"` returns the string `a`), so the inner statement is read under the same reading,
/// and a `sql_mode` set here is recorded as `set_statement_sql_mode`: it changes neither this
/// text's reading nor the next one's. Settings MariaDB refuses here (the character set ones) and
/// server-wide ones are not read (fail closed).
fn set_statement(
    dialect: &MysqlReading,
    tokens: &[TokenWithSpan],
    walker: &Walker<'_>,
    acc: &mut Collector,
) -> Option<Option<Statement>> {
    let mut depth = 0usize;
    let mut at_for = None;
    for (i, t) in tokens.iter().enumerate().skip(2) {
        match &t.token {
            Token::LParen => depth += 1,
            Token::RParen => depth = depth.saturating_sub(1),
            Token::Word(w)
                if depth == 0 && w.quote_style.is_none() && w.keyword == Keyword::FOR =>
            {
                at_for = Some(i);
                break;
            }
            _ => {}
        }
    }
    let at_for = at_for?;
    // The settings, read as the SET statement they would be on their own.
    let mut assignments = Vec::with_capacity(at_for - 1);
    assignments.push(tokens[0].clone());
    assignments.extend_from_slice(&tokens[2..at_for]);
    let set = parse_tokens(dialect, assignments)?;
    if !matches!(set, Statement::Set(_)) {
        return None;
    }
    let mut settings = Collector::default();
    walker.statement(&set, &mut settings);
    if settings.kinds.iter().any(|k| {
        k == "set_global"
            || k == "set_user_variable"
            || (READING_SETTINGS.contains(&k.as_str()) && k != "set_sql_mode")
    }) {
        return None;
    }
    let lineage = read_group(dialect, &tokens[at_for + 1..], walker, acc)?;
    acc.kind("set_statement");
    for kind in settings.kinds.iter().filter(|k| *k != "set") {
        if kind == "set_sql_mode" {
            acc.kind("set_statement_sql_mode");
        } else {
            acc.kind(kind);
        }
    }
    Some(lineage)
}

/// Token-level reading of the MySQL statements sqlparser cannot parse. Returns false when the
/// statement is not one of them (the caller then fails closed).
fn recognise(
    dialect: &MysqlReading,
    tokens: &[TokenWithSpan],
    walker: &Walker<'_>,
    acc: &mut Collector,
) -> bool {
    let kw = |i: usize| keyword(tokens.get(i));
    match (kw(0).as_str(), kw(1).as_str()) {
        ("LOAD", "DATA") | ("LOAD", "XML") => {
            acc.class(Class::Write);
            acc.kind("load_data");
            if (0..tokens.len()).any(|i| kw(i) == "LOCAL") {
                acc.kind("load_data_local");
            }
            let target = (0..tokens.len()).find(|&i| kw(i) == "INTO" && kw(i + 1) == "TABLE");
            match target.and_then(|i| name_at(walker, tokens, i + 2)) {
                Some(t) => acc.write(t),
                None => return false,
            }
            true
        }
        ("HANDLER", _) => {
            // HANDLER t OPEN / READ / CLOSE reads rows of t through a cursor.
            acc.class(Class::Read);
            acc.kind("handler");
            match name_at(walker, tokens, 1) {
                Some(t) => acc.read(t),
                None => return false,
            }
            true
        }
        ("EXECUTE", "IMMEDIATE") => {
            // MariaDB: runs the text now. A literal text is judged as what it runs; anything
            // else (a variable, an expression) is built at run time.
            acc.class(Class::Procedural);
            acc.kind("execute_immediate");
            let literal = match tokens.get(2).map(|t| &t.token) {
                Some(Token::SingleQuotedString(inner)) | Some(Token::DoubleQuotedString(inner))
                    if tokens.len() == 3 || kw(3) == "USING" =>
                {
                    Some(inner)
                }
                _ => None,
            };
            match literal {
                Some(inner) => {
                    let ctx = walker.ctx.clone();
                    let inner = analyze(inner, &ctx);
                    if inner.failure.is_some() {
                        return false;
                    }
                    inner
                        .statements
                        .into_iter()
                        .for_each(|s| acc.absorb(Collector::from_facts(s)));
                }
                None => super::dynamic_sql(acc),
            }
            true
        }
        ("PREPARE", _) if kw(2) == "FROM" => {
            acc.kind("prepare");
            match tokens.get(3).map(|t| &t.token) {
                Some(Token::SingleQuotedString(inner)) | Some(Token::DoubleQuotedString(inner))
                    if tokens.len() == 4 =>
                {
                    let ctx = walker.ctx.clone();
                    let inner = analyze(inner, &ctx);
                    if inner.failure.is_some() {
                        return false;
                    }
                    inner
                        .statements
                        .into_iter()
                        .for_each(|s| acc.absorb(Collector::from_facts(s)));
                    if acc.class.is_none() {
                        acc.class(Class::Procedural);
                    }
                }
                _ => {
                    // The statement text comes from a variable: not visible here.
                    acc.kind("prepare_dynamic");
                    super::dynamic_sql(acc);
                }
            }
            true
        }
        _ => {
            let Some(into) = (0..tokens.len())
                .find(|&i| kw(i) == "INTO" && matches!(kw(i + 1).as_str(), "OUTFILE" | "DUMPFILE"))
            else {
                return false;
            };
            // Drop the INTO OUTFILE clause and its export options, analyse the rest.
            let resume = (into + 2..tokens.len())
                .find(|&i| {
                    matches!(
                        kw(i).as_str(),
                        "FROM"
                            | "WHERE"
                            | "GROUP"
                            | "ORDER"
                            | "LIMIT"
                            | "FOR"
                            | "UNION"
                            | "HAVING"
                            | "WINDOW"
                            | "LOCK"
                    )
                })
                .unwrap_or(tokens.len());
            let mut rest: Vec<TokenWithSpan> = tokens.iter().take(into).cloned().collect();
            rest.extend(tokens.iter().skip(resume).cloned());
            let Some(stmt) = parse_tokens(dialect, rest) else {
                return false;
            };
            walker.statement(&stmt, acc);
            // Writes a file on the database server.
            acc.class(Class::Write);
            acc.kind("into_outfile");
            true
        }
    }
}

/// Turns sqlparser's "Line: L, Column: C" (1-based, columns in characters) into a byte offset.
fn error_position(sql: &str, message: &str) -> Option<usize> {
    let number_after = |label: &str| -> Option<usize> {
        let rest = message.rsplit(label).next()?;
        let digits: String = rest
            .trim_start()
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    };
    let line = number_after("Line:")?;
    let column = number_after("Column:")?;
    let mut offset = 0usize;
    for (i, l) in sql.split('\n').enumerate() {
        if i + 1 == line {
            let within = l
                .char_indices()
                .nth(column.saturating_sub(1))
                .map(|(b, _)| b)
                .unwrap_or(l.len());
            return Some(offset + within);
        }
        offset += l.len() + 1;
    }
    None
}

/// A MySQL name: backticks are already stripped by the parser; case is kept (see module docs).
fn object(ctx: &ReadingContext, name: &ast::ObjectName) -> ObjectName {
    let parts: Vec<String> = name
        .0
        .iter()
        .map(|p| match p {
            ObjectNamePart::Identifier(i) => i.value.clone(),
            ObjectNamePart::Function(f) => f.name.value.clone(),
        })
        .collect();
    match parts.as_slice() {
        [.., db, table] => ObjectName {
            schema: Some(db.clone()),
            name: table.clone(),
        },
        [table] => ObjectName {
            schema: ctx.default_schema.clone(),
            name: table.clone(),
        },
        [] => ObjectName {
            schema: ctx.default_schema.clone(),
            name: String::new(),
        },
    }
}

fn function_name(name: &ast::ObjectName) -> String {
    name.0
        .iter()
        .map(|p| match p {
            ObjectNamePart::Identifier(i) => i.value.to_lowercase(),
            ObjectNamePart::Function(f) => f.name.value.to_lowercase(),
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// Collects relations read and functions called anywhere in a statement, with CTE names
/// resolved per scope (a non-recursive CTE's own body still sees the real table of that name).
struct Objects<'a> {
    ctx: &'a ReadingContext,
    scopes: Vec<Vec<String>>,
    cte_bodies: HashMap<usize, Vec<String>>,
    reads: Vec<ObjectName>,
    functions: Vec<String>,
}

impl Visitor for Objects<'_> {
    type Break = ();

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        let key = query as *const Query as usize;
        let base = match self.cte_bodies.remove(&key) {
            Some(scope) => scope,
            None => self.scopes.last().cloned().unwrap_or_default(),
        };
        let mut visible = base.clone();
        if let Some(with) = &query.with {
            let names: Vec<String> = with
                .cte_tables
                .iter()
                .map(|c| c.alias.name.value.clone())
                .collect();
            for (i, cte) in with.cte_tables.iter().enumerate() {
                let own = if with.recursive { names.len() } else { i };
                let mut scope = base.clone();
                scope.extend(names.iter().take(own).cloned());
                self.cte_bodies
                    .insert(&*cte.query as *const Query as usize, scope);
            }
            visible.extend(names);
        }
        self.scopes.push(visible);
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, _query: &Query) -> ControlFlow<()> {
        self.scopes.pop();
        ControlFlow::Continue(())
    }

    fn pre_visit_relation(&mut self, relation: &ast::ObjectName) -> ControlFlow<()> {
        if let [ObjectNamePart::Identifier(single)] = relation.0.as_slice() {
            let in_scope = self
                .scopes
                .last()
                .is_some_and(|s| s.iter().any(|c| c.eq_ignore_ascii_case(&single.value)));
            if in_scope {
                return ControlFlow::Continue(());
            }
        }
        let o = object(self.ctx, relation);
        if !self.reads.contains(&o) {
            self.reads.push(o);
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        if let Expr::Function(f) = expr {
            let name = function_name(&f.name);
            if !self.functions.contains(&name) {
                self.functions.push(name);
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        if let TableFactor::Function { name, .. } = factor {
            let name = function_name(name);
            if !self.functions.contains(&name) {
                self.functions.push(name);
            }
        }
        ControlFlow::Continue(())
    }
}

struct Walker<'a> {
    ctx: &'a ReadingContext,
    /// A fact was drawn from a literal's value: the analysis holds for this text only.
    read_a_value: Cell<bool>,
}

impl<'a> Walker<'a> {
    fn new(ctx: &'a ReadingContext) -> Self {
        Walker {
            ctx,
            read_a_value: Cell::new(false),
        }
    }

    /// Records reads (everything referenced that is not written) and functions.
    fn objects(&self, stmt: &Statement, acc: &mut Collector) {
        let mut objects = Objects {
            ctx: self.ctx,
            scopes: Vec::new(),
            cte_bodies: HashMap::new(),
            reads: Vec::new(),
            functions: Vec::new(),
        };
        let _ = stmt.visit(&mut objects);
        for read in objects.reads {
            if !acc.writes.contains(&read) {
                acc.read(read);
            }
        }
        objects.functions.into_iter().for_each(|f| acc.function(f));
    }

    fn tables_in(&self, from: &[TableWithJoins]) -> Vec<(ObjectName, Option<String>)> {
        let mut out = Vec::new();
        let mut push = |factor: &TableFactor| {
            if let TableFactor::Table { name, alias, .. } = factor {
                out.push((
                    object(self.ctx, name),
                    alias.as_ref().map(|a| a.name.value.clone()),
                ));
            }
        };
        for t in from {
            push(&t.relation);
            t.joins.iter().for_each(|j| push(&j.relation));
        }
        out
    }

    #[allow(clippy::too_many_lines)]
    fn statement(&self, stmt: &Statement, acc: &mut Collector) {
        match stmt {
            Statement::Query(q) => {
                acc.class(Class::Read);
                acc.kind("select");
                if let SetExpr::Select(select) = q.body.as_ref() {
                    if let Some(into) = &select.into {
                        let variables = into.targets.iter().all(|t| {
                            matches!(t, Expr::Identifier(i) if i.value.starts_with('@') && !i.value.starts_with("@@"))
                        });
                        if variables {
                            acc.kind("select_into_variables");
                        } else {
                            // Anything but user variables may name a table or a file: a write.
                            acc.class(Class::Write);
                            acc.kind("select_into");
                            for target in &into.targets {
                                if let Expr::Identifier(i) = target {
                                    acc.write(ObjectName {
                                        schema: self.ctx.default_schema.clone(),
                                        name: i.value.clone(),
                                    });
                                }
                            }
                        }
                    }
                }
                if !q.locks.is_empty() {
                    acc.kind("select_for_update");
                }
            }
            Statement::Insert(insert) => {
                acc.class(Class::Write);
                acc.kind(if insert.replace_into {
                    "replace"
                } else {
                    "insert"
                });
                if let TableObject::TableName(name) = &insert.table {
                    acc.write(object(self.ctx, name));
                }
                if let Some(OnInsert::DuplicateKeyUpdate(_)) = &insert.on {
                    acc.kind("insert_on_duplicate_key_update");
                    acc.kind("update");
                }
            }
            Statement::Update(update) => {
                acc.class(Class::Write);
                acc.kind("update");
                // A multi-table UPDATE may write any table it joins.
                for (t, _) in self.tables_in(std::slice::from_ref(&update.table)) {
                    acc.write(t);
                }
                acc.filter(where_filter(update.selection.as_ref(), &self.read_a_value));
            }
            Statement::Delete(delete) => {
                acc.class(Class::Write);
                acc.kind("delete");
                let from = match &delete.from {
                    FromTable::WithFromKeyword(f) | FromTable::WithoutKeyword(f) => f.as_slice(),
                };
                let mut sources = self.tables_in(from);
                if let Some(using) = &delete.using {
                    sources.extend(self.tables_in(using));
                }
                if delete.tables.is_empty() {
                    for (t, _) in self.tables_in(from) {
                        acc.write(t);
                    }
                } else {
                    // Multi-table DELETE names its targets, possibly by alias.
                    for target in &delete.tables {
                        let named = object(self.ctx, target);
                        let by_alias = sources
                            .iter()
                            .find(|(_, alias)| {
                                target.0.len() == 1 && alias.as_deref() == Some(named.name.as_str())
                            })
                            .map(|(t, _)| t.clone());
                        acc.write(by_alias.unwrap_or(named));
                    }
                }
                acc.filter(where_filter(delete.selection.as_ref(), &self.read_a_value));
            }
            Statement::Merge(_) => {
                acc.class(Class::Write);
                acc.kind("merge");
            }
            Statement::Truncate(t) => {
                acc.class(Class::Write);
                acc.kind("truncate");
                for target in &t.table_names {
                    acc.write(object(self.ctx, &target.name));
                }
                acc.filter(Filter::Absent);
            }
            Statement::LoadData { table_name, .. } => {
                acc.class(Class::Write);
                acc.kind("load_data");
                acc.write(object(self.ctx, table_name));
            }
            Statement::Explain {
                analyze, statement, ..
            } => {
                acc.kind("explain");
                let mut inner = Collector::default();
                self.statement(statement, &mut inner);
                acc.class(Class::Utility);
                if *analyze {
                    acc.kind("explain_analyze");
                    acc.absorb(inner);
                } else {
                    inner
                        .reads
                        .into_iter()
                        .chain(inner.writes)
                        .for_each(|o| acc.read(o));
                    inner.functions.into_iter().for_each(|f| acc.function(f));
                }
                return;
            }
            Statement::ExplainTable { table_name, .. } => {
                acc.class(Class::Read);
                acc.kind("describe");
                acc.read(object(self.ctx, table_name));
            }
            Statement::Prepare { statement, .. } => {
                acc.kind("prepare");
                self.statement(statement, acc);
                return;
            }
            Statement::Execute {
                name,
                parameters,
                immediate,
                ..
            } if *immediate || name.as_ref().is_some_and(names_immediate) => {
                // MariaDB's EXECUTE IMMEDIATE (which sqlparser's MySQL dialect reads as EXECUTE
                // of a statement named `immediate`): runs the text now. A literal text is judged
                // as what it runs; anything else is built at run time.
                acc.class(Class::Procedural);
                acc.kind("execute_immediate");
                self.read_a_value.set(true);
                let literal = match parameters.first() {
                    Some(Expr::Value(v)) if parameters.len() == 1 => match &v.value {
                        ast::Value::SingleQuotedString(t) | ast::Value::DoubleQuotedString(t) => {
                            Some(t)
                        }
                        _ => None,
                    },
                    _ => None,
                };
                let inner = literal.map(|t| analyze(t, &self.ctx.clone()));
                match inner {
                    Some(inner) if inner.failure.is_none() => inner
                        .statements
                        .into_iter()
                        .for_each(|s| acc.absorb(Collector::from_facts(s))),
                    _ => super::dynamic_sql(acc),
                }
            }
            Statement::Execute { .. } | Statement::Call(_) => {
                acc.class(Class::Procedural);
                acc.kind(if matches!(stmt, Statement::Call(_)) {
                    "call"
                } else {
                    "execute"
                });
            }
            Statement::Deallocate { .. } => {
                acc.class(Class::Session);
                acc.kind("deallocate");
            }
            Statement::Set(set) => self.set(set, acc),
            Statement::Use(_) => {
                acc.class(Class::Session);
                acc.kind("use");
            }
            Statement::StartTransaction { .. } => {
                acc.class(Class::Transaction);
                acc.kind("begin");
            }
            Statement::Commit { .. } => {
                acc.class(Class::Transaction);
                acc.kind("commit");
            }
            Statement::Rollback { savepoint, .. } => {
                acc.class(Class::Transaction);
                acc.kind(if savepoint.is_some() {
                    "rollback_to"
                } else {
                    "rollback"
                });
            }
            Statement::Savepoint { .. } => {
                acc.class(Class::Transaction);
                acc.kind("savepoint");
            }
            Statement::ReleaseSavepoint { .. } => {
                acc.class(Class::Transaction);
                acc.kind("release");
            }
            Statement::ShowFunctions { .. }
            | Statement::ShowVariable { .. }
            | Statement::ShowStatus { .. }
            | Statement::ShowVariables { .. }
            | Statement::ShowCreate { .. }
            | Statement::ShowColumns { .. }
            | Statement::ShowCatalogs { .. }
            | Statement::ShowDatabases { .. }
            | Statement::ShowProcessList { .. }
            | Statement::ShowSchemas { .. }
            | Statement::ShowCharset(_)
            | Statement::ShowObjects(_)
            | Statement::ShowTables { .. }
            | Statement::ShowViews { .. }
            | Statement::ShowCollation { .. } => {
                acc.class(Class::Read);
                acc.kind("show");
                let printed = first_words(stmt, 4);
                let what = printed
                    .split(' ')
                    .skip(1)
                    .find(|w| !matches!(*w, "session" | "global" | "full" | "extended"))
                    .unwrap_or("");
                acc.kind(&format!("show_{what}"));
            }
            Statement::LockTables { .. } | Statement::Lock(_) => {
                acc.class(Class::Utility);
                acc.kind("lock");
            }
            Statement::UnlockTables => {
                acc.class(Class::Utility);
                acc.kind("unlock");
            }
            Statement::Kill { .. }
            | Statement::Flush { .. }
            | Statement::Analyze(_)
            | Statement::OptimizeTable { .. } => {
                acc.class(Class::Utility);
                acc.kind(&first_words(stmt, 1));
            }
            Statement::Grant(_) | Statement::GrantRole(_) => {
                acc.class(Class::Dcl);
                acc.kind("grant");
            }
            Statement::Revoke(_) | Statement::RevokeRole(_) => {
                acc.class(Class::Dcl);
                acc.kind("revoke");
            }
            Statement::CreateRole(_) | Statement::CreateUser(_) => {
                acc.class(Class::Dcl);
                acc.kind("create_role");
                acc.kind(if matches!(stmt, Statement::CreateUser(_)) {
                    "create_user"
                } else {
                    "create_role"
                });
            }
            Statement::AlterRole { .. } | Statement::AlterUser(_) => {
                acc.class(Class::Dcl);
                acc.kind("alter_role");
            }
            Statement::Drop {
                object_type, names, ..
            } => {
                let obj = object_type
                    .to_string()
                    .to_ascii_lowercase()
                    .replace(' ', "_");
                if matches!(obj.as_str(), "role" | "user") {
                    acc.class(Class::Dcl);
                    acc.kind("drop_role");
                } else {
                    acc.class(Class::Ddl);
                    acc.kind("drop");
                    acc.kind(&format!("drop_{obj}"));
                    // In MySQL a schema is a database.
                    if matches!(obj.as_str(), "schema" | "database") {
                        acc.kind("drop_database");
                        acc.kind("drop_schema");
                    } else {
                        names.iter().for_each(|n| acc.write(object(self.ctx, n)));
                    }
                }
            }
            Statement::CreateTable(ct) => {
                acc.class(Class::Ddl);
                acc.kind("create");
                acc.kind("create_table");
                if ct.query.is_some() {
                    acc.kind("create_table_as");
                }
                acc.write(object(self.ctx, &ct.name));
            }
            Statement::CreateView(v) => {
                acc.class(Class::Ddl);
                acc.kind("create");
                acc.kind("create_view");
                acc.write(object(self.ctx, &v.name));
            }
            Statement::CreateIndex(i) => {
                acc.class(Class::Ddl);
                acc.kind("create");
                acc.kind("create_index");
                acc.write(object(self.ctx, &i.table_name));
            }
            Statement::AlterTable(at) => {
                acc.class(Class::Ddl);
                acc.kind("alter");
                acc.kind("alter_table");
                acc.write(object(self.ctx, &at.name));
            }
            Statement::RenameTable(renames) => {
                acc.class(Class::Ddl);
                acc.kind("alter");
                acc.kind("rename");
                for r in renames {
                    acc.write(object(self.ctx, &r.old_name));
                    acc.write(object(self.ctx, &r.new_name));
                }
            }
            Statement::CreateDatabase { .. } | Statement::CreateSchema { .. } => {
                acc.class(Class::Ddl);
                acc.kind("create");
                acc.kind("create_database");
            }
            _ => {
                let words = first_words(stmt, 2);
                let verb = words.split(' ').next().unwrap_or("").to_owned();
                match verb.as_str() {
                    "create" | "alter" | "drop" | "comment" => {
                        acc.class(Class::Ddl);
                        acc.kind(&verb);
                    }
                    // A statement this module does not map: its effect is not visible.
                    _ => acc.class(Class::Procedural),
                }
                acc.kind(&words.replace(' ', "_"));
            }
        }
        self.objects(stmt, acc);
    }

    fn set(&self, set: &ast::Set, acc: &mut Collector) {
        acc.kind("set");
        match set {
            ast::Set::SingleAssignment {
                scope, variable, ..
            } => self.set_variable(variable, global(scope.as_ref()), acc),
            ast::Set::ParenthesizedAssignments { variables, .. } => variables
                .iter()
                .for_each(|v| self.set_variable(v, false, acc)),
            ast::Set::MultipleAssignments { assignments } => assignments
                .iter()
                .for_each(|a| self.set_variable(&a.name, global(a.scope.as_ref()), acc)),
            ast::Set::SetSessionAuthorization(_) => {
                acc.class(Class::Dcl);
                acc.kind("set_session_authorization");
            }
            ast::Set::SetRole { .. } => {
                acc.class(Class::Dcl);
                acc.kind("set_role");
            }
            ast::Set::SetTransaction { .. } => {
                acc.class(Class::Transaction);
                acc.kind("set_transaction");
            }
            ast::Set::SetNames { .. } | ast::Set::SetNamesDefault {} => {
                acc.class(Class::Session);
                acc.kind("set_names");
            }
            ast::Set::SetTimeZone { .. } => {
                acc.class(Class::Session);
                acc.kind("set_time_zone");
            }
            ast::Set::SetSessionParam(_) => {
                acc.class(Class::Session);
                acc.kind("set_session_param");
            }
        }
    }

    /// `global`: the statement said `SET GLOBAL` (or `@@global.` is in the name).
    fn set_variable(&self, variable: &ast::ObjectName, global: bool, acc: &mut Collector) {
        let last = variable.0.last().map(|p| match p {
            ObjectNamePart::Identifier(i) => i.value.clone(),
            ObjectNamePart::Function(f) => f.name.value.clone(),
        });
        // The whole name, which may come as one identifier (`@@global.x`) or in parts.
        let full = variable
            .0
            .iter()
            .map(|p| match p {
                ObjectNamePart::Identifier(i) => i.value.to_ascii_lowercase(),
                ObjectNamePart::Function(f) => f.name.value.to_ascii_lowercase(),
            })
            .collect::<Vec<_>>()
            .join(".");
        let name = last.unwrap_or_default().to_ascii_lowercase();
        let user_variable = full.starts_with('@') && !full.starts_with("@@");
        let name = name.trim_start_matches('@');
        let scoped = full.trim_start_matches('@');
        if !user_variable
            && (global
                || scoped.starts_with("global.")
                || scoped.starts_with("persist.")
                || scoped.starts_with("persist_only."))
        {
            // A server-wide setting changes every session of every identity on the server: it
            // is administration, not a session's own state.
            acc.kind("set_global");
            acc.class(Class::Dcl);
            return;
        }
        let name = name
            .strip_prefix("session.")
            .or_else(|| name.strip_prefix("global."))
            .or_else(|| name.strip_prefix("local."))
            .unwrap_or(name);
        if user_variable {
            acc.kind("set_user_variable");
        } else {
            acc.kind(&format!("set_{name}"));
        }
        acc.class(match name {
            "transaction_isolation" | "tx_isolation" | "transaction_read_only" | "tx_read_only" => {
                Class::Transaction
            }
            _ => Class::Session,
        });
    }
}

/// Whether an EXECUTE's statement name is the bare keyword IMMEDIATE (a quoted name is a
/// prepared statement of that name).
fn names_immediate(name: &ast::ObjectName) -> bool {
    matches!(name.0.as_slice(), [ObjectNamePart::Identifier(i)]
        if i.quote_style.is_none() && i.value.eq_ignore_ascii_case("immediate"))
}

/// Whether a SET's scope is GLOBAL.
fn global(scope: Option<&ast::ContextModifier>) -> bool {
    matches!(scope, Some(ast::ContextModifier::Global))
}

/// The first `n` words of a statement as sqlparser prints it, lower-case (`show tables`).
fn first_words(stmt: &Statement, n: usize) -> String {
    stmt.to_string()
        .split_whitespace()
        .take(n)
        .map(|w| w.to_ascii_lowercase())
        .filter(|w| w.chars().all(|c| c.is_ascii_alphabetic() || c == '_'))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The filter of an UPDATE or DELETE. `read`: set when a literal's value was looked at.
fn where_filter(selection: Option<&Expr>, read: &Cell<bool>) -> Filter {
    match selection {
        None => Filter::Absent,
        Some(e) if truth(e, 0, read) == Some(true) => Filter::Trivial,
        Some(_) => Filter::Present,
    }
}

fn truth(e: &Expr, depth: usize, read: &Cell<bool>) -> Option<bool> {
    if depth > 64 {
        return None;
    }
    let d = depth + 1;
    match e {
        Expr::Nested(inner) => truth(inner, d, read),
        Expr::UnaryOp {
            op: UnaryOperator::Not,
            expr,
        } => truth(expr, d, read).map(|b| !b),
        Expr::BinaryOp { left, op, right } => match op {
            BinaryOperator::And => filter::and([truth(left, d, read), truth(right, d, read)]),
            BinaryOperator::Or => filter::or([truth(left, d, read), truth(right, d, read)]),
            BinaryOperator::Xor => Some(truth(left, d, read)? != truth(right, d, read)?),
            _ => {
                let op = op.to_string();
                if filter::reflexive(&op) && same_column(left, right) {
                    return Some(true);
                }
                filter::compare(
                    &op,
                    &constant(left, d, read)?,
                    &constant(right, d, read)?,
                    true,
                )
            }
        },
        Expr::In {
            expr,
            target: ast::InTarget::List(list),
            negated,
            ..
        } => {
            let l = constant(expr, d, read)?;
            let any =
                filter::or(list.iter().map(|i| {
                    constant(i, d, read).and_then(|r| filter::compare("=", &l, &r, true))
                }));
            if *negated {
                any.map(|b| !b)
            } else {
                any
            }
        }
        Expr::IsNull(inner) => Some(matches!(constant(inner, d, read)?, Const::Null)),
        Expr::IsNotNull(inner) => Some(!matches!(constant(inner, d, read)?, Const::Null)),
        Expr::IsTrue(inner) => Some(constant(inner, d, read)?.truth() == Some(true)),
        _ => constant(e, d, read)?.truth(),
    }
}

fn same_column(a: &Expr, b: &Expr) -> bool {
    match (a, b) {
        (Expr::Identifier(x), Expr::Identifier(y)) => x.value.eq_ignore_ascii_case(&y.value),
        (Expr::CompoundIdentifier(x), Expr::CompoundIdentifier(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|(p, q)| p.value.eq_ignore_ascii_case(&q.value))
        }
        _ => false,
    }
}

fn constant(e: &Expr, depth: usize, read: &Cell<bool>) -> Option<Const> {
    if depth > 64 {
        return None;
    }
    match e {
        Expr::Value(v) => {
            read.set(true);
            match &v.value {
                ast::Value::Number(n, _) => n.parse().ok().map(Const::Num),
                ast::Value::SingleQuotedString(s) | ast::Value::DoubleQuotedString(s) => {
                    Some(Const::Str(s.clone()))
                }
                ast::Value::Boolean(b) => Some(Const::Bool(*b)),
                ast::Value::Null => Some(Const::Null),
                _ => None,
            }
        }
        Expr::Nested(inner) => constant(inner, depth + 1, read),
        Expr::UnaryOp {
            op: UnaryOperator::Minus,
            expr,
        } => match constant(expr, depth + 1, read)? {
            Const::Num(n) => Some(Const::Num(-n)),
            _ => None,
        },
        Expr::BinaryOp { .. }
        | Expr::UnaryOp { .. }
        | Expr::In { .. }
        | Expr::IsNull(_)
        | Expr::IsNotNull(_) => truth(e, depth + 1, read).map(Const::Bool),
        _ => None,
    }
}
