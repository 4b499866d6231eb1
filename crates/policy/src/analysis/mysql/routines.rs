//! MySQL stored programs: `CREATE PROCEDURE`, `FUNCTION`, `TRIGGER` and `EVENT`, whose bodies
//! sqlparser's MySQL dialect does not parse. Written by hand over sqlparser's tokens, because no
//! crate reads MySQL's compound statements.
//!
//! The header is stepped over, and the body's compound statements (`BEGIN ... END`, `IF`, `CASE`,
//! `LOOP`, `WHILE`, `REPEAT`, `DECLARE` of variables, cursors and handlers) are taken apart into
//! the SQL statements and conditions they hold, each read like a statement of its own (a
//! condition as `SELECT <condition>`). Blocks are flattened: a rule sees every statement the
//! body may run, whichever branch runs it. Creating a routine runs nothing, but what its body will
//! do is reported, as for PostgreSQL's function bodies, so rules on objects and kinds see it
//! before it is called. A piece the reader cannot read is SQL it cannot see (`dynamic_sql`: every
//! deny and approval rule applies), and so is a function loaded from a shared library (`SONAME`).

use sqlparser::tokenizer::{Token, TokenWithSpan};

use super::{keyword, name_at, read_group, MysqlReading, Walker};
use crate::analysis::{dynamic_sql, Collector};
use crate::facts::Class;

/// The stored program a statement's tokens create (`"procedure"`, ...), if they create one.
pub(super) fn routine_kind(tokens: &[TokenWithSpan]) -> Option<&'static str> {
    if keyword(tokens.first()) != "CREATE" {
        return None;
    }
    // CREATE [OR REPLACE] [DEFINER = user] [AGGREGATE] PROCEDURE | FUNCTION | TRIGGER | EVENT
    for t in tokens.iter().skip(1).take(16) {
        match &t.token {
            Token::LParen | Token::SemiColon => return None,
            Token::Word(w) if w.quote_style.is_none() => {
                match w.value.to_ascii_uppercase().as_str() {
                    "PROCEDURE" => return Some("procedure"),
                    "FUNCTION" => return Some("function"),
                    "TRIGGER" => return Some("trigger"),
                    "EVENT" => return Some("event"),
                    "TABLE" | "VIEW" | "INDEX" | "DATABASE" | "SCHEMA" | "USER" | "ROLE"
                    | "SEQUENCE" | "SERVER" | "TABLESPACE" => return None,
                    _ => {}
                }
            }
            _ => {}
        }
    }
    None
}

/// Splits a text's tokens (whitespace left out) into statements at semicolons; inside the body of
/// a stored program, semicolons end the body's own statements, not the `CREATE`.
pub(super) fn split(tokens: &[TokenWithSpan]) -> Vec<&[TokenWithSpan]> {
    let mut groups = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let start = i;
        let routine = routine_kind(&tokens[start..]).is_some();
        let mut depth = 0usize;
        while i < tokens.len() {
            if tokens[i].token == Token::SemiColon && depth == 0 {
                break;
            }
            if routine {
                match keyword(tokens.get(i)).as_str() {
                    // Inside a stored program BEGIN always opens a block, and a CASE expression
                    // ends with END as a CASE statement does.
                    "BEGIN" | "CASE" => depth += 1,
                    "IF" | "LOOP" | "WHILE" | "REPEAT" if opens(tokens, i) => depth += 1,
                    "END" => {
                        depth = depth.saturating_sub(1);
                        // END IF, END LOOP, END label: the word belongs to the END.
                        if matches!(tokens.get(i + 1).map(|t| &t.token), Some(Token::Word(_))) {
                            i += 1;
                        }
                    }
                    _ => {}
                }
            }
            i += 1;
        }
        if i > start {
            groups.push(&tokens[start..i]);
        }
        i += 1;
    }
    groups
}

/// Whether the compound statement keyword at `i` starts a statement (IF the statement, not the
/// IF() function or IF EXISTS; REPEAT the loop, not the function): it follows the end of a
/// statement, a label, a routine's parameter list or a keyword after which a statement starts.
fn opens(tokens: &[TokenWithSpan], i: usize) -> bool {
    let Some(before) = i.checked_sub(1).and_then(|b| tokens.get(b)) else {
        return false;
    };
    matches!(
        before.token,
        Token::SemiColon | Token::Colon | Token::RParen
    ) || matches!(
        keyword(Some(before)).as_str(),
        "BEGIN" | "THEN" | "ELSE" | "DO" | "LOOP" | "REPEAT" | "ROW" | "ATOMIC"
    )
}

/// Reads a `CREATE` of a stored program of `kind` into `acc`: DDL, with the facts of everything
/// its body may run.
pub(super) fn create_routine(
    dialect: &MysqlReading,
    tokens: &[TokenWithSpan],
    walker: &Walker<'_>,
    acc: &mut Collector,
    kind: &str,
) {
    acc.class(Class::Ddl);
    acc.kind("create");
    acc.kind(&format!("create_{kind}"));
    let kw = |i: usize| keyword(tokens.get(i));
    let word = kind.to_ascii_uppercase();
    let Some(at) = (1..tokens.len()).find(|&i| kw(i) == word) else {
        dynamic_sql(acc);
        return;
    };
    let body = match kind {
        "procedure" | "function" => {
            let params = (at + 1..tokens.len()).find(|&i| tokens[i].token == Token::LParen);
            let Some(after) = params.and_then(|p| closing_paren(tokens, p)).map(|c| c + 1) else {
                // No parameter list: `CREATE FUNCTION f RETURNS ... SONAME 'lib.so'` loads
                // native code, whatever it does is unseen.
                acc.kind("create_function_soname");
                dynamic_sql(acc);
                return;
            };
            let mut i = after;
            if kind == "function" {
                if kw(i) != "RETURNS" {
                    dynamic_sql(acc);
                    return;
                }
                i = skip_type(tokens, i + 1);
            }
            skip_characteristics(tokens, i)
        }
        "trigger" => {
            // ... ON table FOR EACH ROW [FOLLOWS | PRECEDES other] body
            if let Some(on) = (at + 1..tokens.len()).find(|&i| kw(i) == "ON") {
                if let Some(table) = name_at(walker, tokens, on + 1) {
                    acc.write(table);
                }
            }
            match (at + 1..tokens.len()).find(|&i| kw(i) == "EACH" && kw(i + 1) == "ROW") {
                Some(each) if matches!(kw(each + 2).as_str(), "FOLLOWS" | "PRECEDES") => each + 4,
                Some(each) => each + 2,
                None => tokens.len(),
            }
        }
        // ... ON SCHEDULE ... DO body
        _ => (at + 1..tokens.len())
            .find(|&i| kw(i) == "DO")
            .map_or(tokens.len(), |d| d + 1),
    };
    match tokens.get(body..) {
        Some(body) if !body.is_empty() => read_body(dialect, body, walker, acc),
        _ => dynamic_sql(acc),
    }
}

/// The index of the parenthesis closing the one at `open`.
fn closing_paren(tokens: &[TokenWithSpan], open: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (i, t) in tokens.iter().enumerate().skip(open) {
        match t.token {
            Token::LParen => depth += 1,
            Token::RParen => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// Steps over a function's return type: `INT UNSIGNED`, `VARCHAR(20) CHARSET utf8mb4`, ...
fn skip_type(tokens: &[TokenWithSpan], mut i: usize) -> usize {
    let kw = |i: usize| keyword(tokens.get(i));
    i += 1;
    if tokens.get(i).map(|t| &t.token) == Some(&Token::LParen) {
        i = closing_paren(tokens, i).map_or(tokens.len(), |c| c + 1);
    }
    loop {
        match kw(i).as_str() {
            "UNSIGNED" | "SIGNED" | "ZEROFILL" | "BINARY" | "ASCII" | "UNICODE" | "BYTE" => i += 1,
            "CHARSET" | "COLLATE" => i += 2,
            "CHARACTER" if kw(i + 1) == "SET" => i += 3,
            _ => return i,
        }
    }
}

/// Steps over a routine's characteristics: COMMENT, LANGUAGE SQL, [NOT] DETERMINISTIC, CONTAINS
/// SQL, NO SQL, READS SQL DATA, MODIFIES SQL DATA, SQL SECURITY DEFINER | INVOKER.
fn skip_characteristics(tokens: &[TokenWithSpan], mut i: usize) -> usize {
    let kw = |i: usize| keyword(tokens.get(i));
    loop {
        match kw(i).as_str() {
            "NOT" | "DETERMINISTIC" => i += 1,
            "COMMENT" | "LANGUAGE" | "CONTAINS" | "NO" => i += 2,
            "READS" | "MODIFIES" | "SQL" => i += 3,
            _ => return i,
        }
    }
}

/// What a fragment of a body is: a statement, or a condition or expression (of IF, ELSEIF,
/// WHILE, UNTIL, CASE and WHEN).
#[derive(Clone, Copy, PartialEq)]
enum Fragment {
    Statement,
    Condition,
}

/// Reads a stored program's body: every statement and condition in it, blocks flattened.
fn read_body(
    dialect: &MysqlReading,
    tokens: &[TokenWithSpan],
    walker: &Walker<'_>,
    acc: &mut Collector,
) {
    let kw = |i: usize| keyword(tokens.get(i));
    let mut piece: Vec<TokenWithSpan> = Vec::new();
    let mut what = Fragment::Statement;
    // CASE expressions open in the current piece, whose END is theirs.
    let mut cases = 0usize;
    let mut i = 0;
    while i < tokens.len() {
        let t = &tokens[i];
        let k = kw(i);
        if piece.is_empty() && what == Fragment::Statement {
            // At the start of a statement.
            if matches!(t.token, Token::Word(_))
                && tokens.get(i + 1).map(|n| &n.token) == Some(&Token::Colon)
            {
                i += 2; // a label
                continue;
            }
            match k.as_str() {
                "BEGIN" => {
                    i += if kw(i + 1) == "NOT" && kw(i + 2) == "ATOMIC" {
                        3
                    } else {
                        1
                    };
                    continue;
                }
                "END" => {
                    i += if matches!(tokens.get(i + 1).map(|n| &n.token), Some(Token::Word(_))) {
                        2
                    } else {
                        1
                    };
                    continue;
                }
                "ELSE" | "LOOP" | "REPEAT" | "THEN" => {
                    i += 1;
                    continue;
                }
                "IF" | "ELSEIF" | "WHILE" | "UNTIL" | "WHEN" | "CASE" => {
                    what = Fragment::Condition;
                    i += 1;
                    continue;
                }
                _ => {}
            }
            if t.token == Token::SemiColon {
                i += 1;
                continue;
            }
        }
        if cases == 0 {
            let ends = match what {
                Fragment::Condition => matches!(k.as_str(), "THEN" | "DO" | "WHEN" | "END"),
                Fragment::Statement => {
                    t.token == Token::SemiColon
                        || matches!(k.as_str(), "END" | "ELSE" | "ELSEIF" | "WHEN" | "UNTIL")
                        // A handler's block: `DECLARE ... HANDLER FOR ... BEGIN ... END`.
                        || (k == "BEGIN" && keyword(piece.first()) == "DECLARE")
                }
            };
            if ends {
                let piece = std::mem::take(&mut piece);
                read_piece(dialect, &piece, what, walker, acc);
                match (what, k.as_str()) {
                    // CASE x WHEN: the operand is read; the WHEN's condition follows.
                    (Fragment::Condition, "WHEN") => i += 1,
                    // UNTIL ... END REPEAT
                    (Fragment::Condition, "END") => {
                        what = Fragment::Statement;
                        i += 2;
                    }
                    (Fragment::Condition, _) => {
                        what = Fragment::Statement;
                        i += 1;
                    }
                    // The END, ELSE, ... or BEGIN is read again at the start of a statement.
                    (Fragment::Statement, _) if t.token != Token::SemiColon => {}
                    (Fragment::Statement, _) => i += 1,
                }
                continue;
            }
        }
        match k.as_str() {
            "CASE" => cases += 1,
            "END" => cases = cases.saturating_sub(1),
            _ => {}
        }
        piece.push(t.clone());
        i += 1;
    }
    read_piece(dialect, &piece, what, walker, acc);
}

/// Reads one statement or condition of a body into `acc`.
fn read_piece(
    dialect: &MysqlReading,
    piece: &[TokenWithSpan],
    what: Fragment,
    walker: &Walker<'_>,
    acc: &mut Collector,
) {
    if piece.is_empty() {
        return;
    }
    if what == Fragment::Condition {
        return read_expression(dialect, piece, walker, acc);
    }
    let kw = |i: usize| keyword(piece.get(i));
    match kw(0).as_str() {
        "DECLARE" => {
            if let Some(f) = (1..piece.len()).find(|&i| kw(i) == "CURSOR" && kw(i + 1) == "FOR") {
                read_piece(dialect, &piece[f + 2..], Fragment::Statement, walker, acc);
            } else if let Some(h) =
                (1..piece.len()).find(|&i| kw(i) == "HANDLER" && kw(i + 1) == "FOR")
            {
                let statement = skip_conditions(piece, h + 2);
                read_piece(
                    dialect,
                    &piece[statement..],
                    Fragment::Statement,
                    walker,
                    acc,
                );
            } else if let Some(d) = (1..piece.len()).find(|&i| kw(i) == "DEFAULT") {
                read_expression(dialect, &piece[d + 1..], walker, acc);
            }
        }
        // Cursor steps, loop control, diagnostics: they run no SQL of their own (a cursor's query
        // is read where it is declared).
        "LEAVE" | "ITERATE" | "OPEN" | "CLOSE" | "FETCH" | "SIGNAL" | "RESIGNAL" | "GET" => {}
        "RETURN" => read_expression(dialect, &piece[1..], walker, acc),
        _ => {
            let mut inner = Collector::default();
            match read_group(dialect, piece, walker, &mut inner) {
                Some(_) => acc.absorb(inner),
                None => dynamic_sql(acc),
            }
        }
    }
}

/// Steps over a handler's conditions: SQLEXCEPTION, SQLWARNING, NOT FOUND, SQLSTATE [VALUE]
/// 'xxxxx', an error number or a condition's name, separated by commas.
fn skip_conditions(piece: &[TokenWithSpan], mut i: usize) -> usize {
    let kw = |i: usize| keyword(piece.get(i));
    loop {
        i += match kw(i).as_str() {
            "NOT" => 2,
            "SQLSTATE" if kw(i + 1) == "VALUE" => 3,
            "SQLSTATE" => 2,
            _ => 1,
        };
        if piece.get(i).map(|t| &t.token) != Some(&Token::Comma) {
            return i.min(piece.len());
        }
        i += 1;
    }
}

/// Reads an expression of a body (a condition, a default, a RETURN) as `SELECT <expression>`:
/// a subquery in it reads what it reads.
fn read_expression(
    dialect: &MysqlReading,
    expression: &[TokenWithSpan],
    walker: &Walker<'_>,
    acc: &mut Collector,
) {
    if expression.is_empty() {
        return;
    }
    let mut select = Vec::with_capacity(expression.len() + 1);
    select.push(TokenWithSpan::wrap(Token::make_keyword("SELECT")));
    select.extend_from_slice(expression);
    let mut inner = Collector::default();
    match read_group(dialect, &select, walker, &mut inner) {
        Some(_) => acc.absorb(inner),
        None => dynamic_sql(acc),
    }
}
