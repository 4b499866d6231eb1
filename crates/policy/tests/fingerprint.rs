//! Fingerprints: texts that differ only in literal values, layout, comments or keyword case share
//! one; texts of another shape do not. PostgreSQL's come from pg_query, MySQL's from the token
//! stream.

use policy::analysis::{analyze, Dialect, ReadingContext};

fn fingerprint(dialect: Dialect, sql: &str) -> String {
    let analysis = analyze(sql, &ReadingContext::new(dialect));
    assert!(analysis.failure.is_none(), "{sql}: {:?}", analysis.failure);
    let fp = analysis
        .fingerprint
        .unwrap_or_else(|| panic!("{sql}: no fingerprint"));
    assert_eq!(fp.len(), 16, "{sql}: {fp}");
    assert!(fp.bytes().all(|b| b.is_ascii_hexdigit()), "{fp}");
    fp
}

/// Each group shares one fingerprint; different groups do not.
fn check(dialect: Dialect, groups: &[&[&str]]) {
    let prints: Vec<String> = groups
        .iter()
        .map(|group| {
            let first = fingerprint(dialect, group[0]);
            for sql in &group[1..] {
                assert_eq!(
                    fingerprint(dialect, sql),
                    first,
                    "{sql:?} vs {:?}",
                    group[0]
                );
            }
            first
        })
        .collect();
    for (i, a) in prints.iter().enumerate() {
        for (j, b) in prints.iter().enumerate().skip(i + 1) {
            assert_ne!(
                a, b,
                "{:?} and {:?} must differ",
                groups[i][0], groups[j][0]
            );
        }
    }
}

#[test]
fn postgres_fingerprints_ignore_literals_and_layout() {
    check(
        Dialect::Postgres,
        &[
            &[
                "select name from users where id = 1",
                "SELECT name FROM users WHERE id = 42 -- why",
                "select name\n  from users\n where id = $1",
            ],
            &["select email from users where id = 1"],
            &[
                "delete from users where id = 1",
                "DELETE FROM users WHERE id = 7",
            ],
            &["delete from users"],
        ],
    );
}

#[test]
fn mysql_fingerprints_ignore_literals_and_layout() {
    check(
        Dialect::Mysql,
        &[
            &[
                "select name from users where id = 1",
                "SELECT name FROM users WHERE id = 42 # why",
                "select name\n  from users\n where id = ?",
                "select name from users where id = 'x'",
            ],
            &[
                "select name from users where id in (1, 2, 3)",
                "select name from users where id in (4)",
            ],
            &["select email from users where id = 1"],
            &["select name from `Users` where id = 1"],
            &[
                "delete from users where id = 1",
                "DELETE FROM users WHERE id = 7",
            ],
        ],
    );
}

#[test]
fn unparsable_texts_have_no_fingerprint() {
    for dialect in [Dialect::Postgres, Dialect::Mysql] {
        let analysis = analyze("selec nonsense from", &ReadingContext::new(dialect));
        assert!(analysis.failure.is_some());
        assert_eq!(analysis.fingerprint, None);
    }
}
