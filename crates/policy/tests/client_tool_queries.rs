//! Statements that client tools send on their own (psql meta-commands, pgbench, PgJDBC and
//! DBeaver metadata, Python/Node/Java drivers' startup): they must parse and, for the tools' own
//! statements, classify as read, session, transaction or utility so that a read-only identity
//! can use its tools. The psql queries were captured with `psql -E` from PostgreSQL 15.
//! pgbench's workload statements (TPC-B updates, `-i` DDL and COPY) are checked separately: they
//! must parse and classify as what they are.

use policy::analysis::{analyze, Dialect, ReadingContext};
use policy::facts::Class;

/// (tool, statement text) for PostgreSQL clients' own statements.
const POSTGRES_TOOL_STATEMENTS: &[(&str, &str)] = &[
    (
        "psql",
        r###"SELECT n.nspname as "Schema",
  c.relname as "Name",
  CASE c.relkind WHEN 'r' THEN 'table' WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view' WHEN 'i' THEN 'index' WHEN 'S' THEN 'sequence' WHEN 't' THEN 'TOAST table' WHEN 'f' THEN 'foreign table' WHEN 'p' THEN 'partitioned table' WHEN 'I' THEN 'partitioned index' END as "Type",
  pg_catalog.pg_get_userbyid(c.relowner) as "Owner"
FROM pg_catalog.pg_class c
     LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
     LEFT JOIN pg_catalog.pg_am am ON am.oid = c.relam
WHERE c.relkind IN ('r','p','')
      AND n.nspname <> 'pg_catalog'
      AND n.nspname !~ '^pg_toast'
      AND n.nspname <> 'information_schema'
  AND pg_catalog.pg_table_is_visible(c.oid)
ORDER BY 1,2;"###,
    ),
    (
        "psql",
        r###"SELECT c.oid,
  n.nspname,
  c.relname
FROM pg_catalog.pg_class c
     LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relname OPERATOR(pg_catalog.~) '^(pg_class)$' COLLATE pg_catalog.default
  AND pg_catalog.pg_table_is_visible(c.oid)
ORDER BY 2, 3;"###,
    ),
    (
        "psql",
        r###"SELECT c.relchecks, c.relkind, c.relhasindex, c.relhasrules, c.relhastriggers, c.relrowsecurity, c.relforcerowsecurity, false AS relhasoids, c.relispartition, '', c.reltablespace, CASE WHEN c.reloftype = 0 THEN '' ELSE c.reloftype::pg_catalog.regtype::pg_catalog.text END, c.relpersistence, c.relreplident, am.amname
FROM pg_catalog.pg_class c
 LEFT JOIN pg_catalog.pg_class tc ON (c.reltoastrelid = tc.oid)
LEFT JOIN pg_catalog.pg_am am ON (c.relam = am.oid)
WHERE c.oid = '1259';"###,
    ),
    (
        "psql",
        r###"SELECT a.attname,
  pg_catalog.format_type(a.atttypid, a.atttypmod),
  (SELECT pg_catalog.pg_get_expr(d.adbin, d.adrelid, true)
   FROM pg_catalog.pg_attrdef d
   WHERE d.adrelid = a.attrelid AND d.adnum = a.attnum AND a.atthasdef),
  a.attnotnull,
  (SELECT c.collname FROM pg_catalog.pg_collation c, pg_catalog.pg_type t
   WHERE c.oid = a.attcollation AND t.oid = a.atttypid AND a.attcollation <> t.typcollation) AS attcollation,
  a.attidentity,
  a.attgenerated
FROM pg_catalog.pg_attribute a
WHERE a.attrelid = '1259' AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum;"###,
    ),
    (
        "psql",
        r###"SELECT c2.relname, i.indisprimary, i.indisunique, i.indisclustered, i.indisvalid, pg_catalog.pg_get_indexdef(i.indexrelid, 0, true),
  pg_catalog.pg_get_constraintdef(con.oid, true), contype, condeferrable, condeferred, i.indisreplident, c2.reltablespace
FROM pg_catalog.pg_class c, pg_catalog.pg_class c2, pg_catalog.pg_index i
  LEFT JOIN pg_catalog.pg_constraint con ON (conrelid = i.indrelid AND conindid = i.indexrelid AND contype IN ('p','u','x'))
WHERE c.oid = '1259' AND c.oid = i.indrelid AND i.indexrelid = c2.oid
ORDER BY i.indisprimary DESC, c2.relname;"###,
    ),
    (
        "psql",
        r###"SELECT pol.polname, pol.polpermissive,
  CASE WHEN pol.polroles = '{0}' THEN NULL ELSE pg_catalog.array_to_string(array(select rolname from pg_catalog.pg_roles where oid = any (pol.polroles) order by 1),',') END,
  pg_catalog.pg_get_expr(pol.polqual, pol.polrelid),
  pg_catalog.pg_get_expr(pol.polwithcheck, pol.polrelid),
  CASE pol.polcmd
    WHEN 'r' THEN 'SELECT'
    WHEN 'a' THEN 'INSERT'
    WHEN 'w' THEN 'UPDATE'
    WHEN 'd' THEN 'DELETE'
    END AS cmd
FROM pg_catalog.pg_policy pol
WHERE pol.polrelid = '1259' ORDER BY 1;"###,
    ),
    (
        "psql",
        r###"SELECT oid, stxrelid::pg_catalog.regclass, stxnamespace::pg_catalog.regnamespace::pg_catalog.text AS nsp, stxname,
pg_catalog.pg_get_statisticsobjdef_columns(oid) AS columns,
  'd' = any(stxkind) AS ndist_enabled,
  'f' = any(stxkind) AS deps_enabled,
  'm' = any(stxkind) AS mcv_enabled,
stxstattarget
FROM pg_catalog.pg_statistic_ext
WHERE stxrelid = '1259'
ORDER BY nsp, stxname;"###,
    ),
    (
        "psql",
        r###"SELECT pubname
     , NULL
     , NULL
FROM pg_catalog.pg_publication p
     JOIN pg_catalog.pg_publication_namespace pn ON p.oid = pn.pnpubid
     JOIN pg_catalog.pg_class pc ON pc.relnamespace = pn.pnnspid
WHERE pc.oid ='1259' and pg_catalog.pg_relation_is_publishable('1259')
UNION
SELECT pubname
     , pg_get_expr(pr.prqual, c.oid)
     , (CASE WHEN pr.prattrs IS NOT NULL THEN
         (SELECT string_agg(attname, ', ')
           FROM pg_catalog.generate_series(0, pg_catalog.array_upper(pr.prattrs::pg_catalog.int2[], 1)) s,
                pg_catalog.pg_attribute
          WHERE attrelid = pr.prrelid AND attnum = prattrs[s])
        ELSE NULL END) FROM pg_catalog.pg_publication p
     JOIN pg_catalog.pg_publication_rel pr ON p.oid = pr.prpubid
     JOIN pg_catalog.pg_class c ON c.oid = pr.prrelid
WHERE pr.prrelid = '1259'
UNION
SELECT pubname
     , NULL
     , NULL
FROM pg_catalog.pg_publication p
WHERE p.puballtables AND pg_catalog.pg_relation_is_publishable('1259')
ORDER BY 1;"###,
    ),
    (
        "psql",
        r###"SELECT c.oid::pg_catalog.regclass
FROM pg_catalog.pg_class c, pg_catalog.pg_inherits i
WHERE c.oid = i.inhparent AND i.inhrelid = '1259'
  AND c.relkind != 'p' AND c.relkind != 'I'
ORDER BY inhseqno;"###,
    ),
    (
        "psql",
        r###"SELECT c.oid::pg_catalog.regclass, c.relkind, inhdetachpending, pg_catalog.pg_get_expr(c.relpartbound, c.oid)
FROM pg_catalog.pg_class c, pg_catalog.pg_inherits i
WHERE c.oid = i.inhrelid AND i.inhparent = '1259'
ORDER BY pg_catalog.pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT', c.oid::pg_catalog.regclass::pg_catalog.text;"###,
    ),
    (
        "psql",
        r###"SELECT d.datname as "Name",
       pg_catalog.pg_get_userbyid(d.datdba) as "Owner",
       pg_catalog.pg_encoding_to_char(d.encoding) as "Encoding",
       d.datcollate as "Collate",
       d.datctype as "Ctype",
       d.daticulocale as "ICU Locale",
       CASE d.datlocprovider WHEN 'c' THEN 'libc' WHEN 'i' THEN 'icu' END AS "Locale Provider",
       pg_catalog.array_to_string(d.datacl, E'\n') AS "Access privileges"
FROM pg_catalog.pg_database d
ORDER BY 1;"###,
    ),
    (
        "psql",
        r###"SELECT n.nspname AS "Name",
  pg_catalog.pg_get_userbyid(n.nspowner) AS "Owner"
FROM pg_catalog.pg_namespace n
WHERE n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'
ORDER BY 1;"###,
    ),
    (
        "psql",
        r###"SELECT n.nspname as "Schema",
  p.proname as "Name",
  pg_catalog.pg_get_function_result(p.oid) as "Result data type",
  pg_catalog.pg_get_function_arguments(p.oid) as "Argument data types",
 CASE p.prokind
  WHEN 'a' THEN 'agg'
  WHEN 'w' THEN 'window'
  WHEN 'p' THEN 'proc'
  ELSE 'func'
 END as "Type"
FROM pg_catalog.pg_proc p
     LEFT JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
WHERE pg_catalog.pg_function_is_visible(p.oid)
      AND n.nspname <> 'pg_catalog'
      AND n.nspname <> 'information_schema'
ORDER BY 1, 2, 4;"###,
    ),
    (
        "psql",
        r###"SELECT r.rolname, r.rolsuper, r.rolinherit,
  r.rolcreaterole, r.rolcreatedb, r.rolcanlogin,
  r.rolconnlimit, r.rolvaliduntil,
  ARRAY(SELECT b.rolname
        FROM pg_catalog.pg_auth_members m
        JOIN pg_catalog.pg_roles b ON (m.roleid = b.oid)
        WHERE m.member = r.oid) as memberof
, r.rolreplication
, r.rolbypassrls
FROM pg_catalog.pg_roles r
WHERE r.rolname !~ '^pg_'
ORDER BY 1;"###,
    ),
    (
        "psql",
        r###"SELECT n.nspname as "Schema",
  c.relname as "Name",
  CASE c.relkind WHEN 'r' THEN 'table' WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view' WHEN 'i' THEN 'index' WHEN 'S' THEN 'sequence' WHEN 't' THEN 'TOAST table' WHEN 'f' THEN 'foreign table' WHEN 'p' THEN 'partitioned table' WHEN 'I' THEN 'partitioned index' END as "Type",
  pg_catalog.pg_get_userbyid(c.relowner) as "Owner"
FROM pg_catalog.pg_class c
     LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('v','')
      AND n.nspname <> 'pg_catalog'
      AND n.nspname !~ '^pg_toast'
      AND n.nspname <> 'information_schema'
  AND pg_catalog.pg_table_is_visible(c.oid)
ORDER BY 1,2;"###,
    ),
    (
        "pgbench -S",
        r###"SELECT abalance FROM pgbench_accounts WHERE aid = 48213;"###,
    ),
    (
        "pgbench startup",
        r###"select o.n, p.partstrat, pg_catalog.count(i.inhparent) from pg_catalog.pg_class as c join pg_catalog.pg_namespace as n on (n.oid = c.relnamespace) cross join lateral (select pg_catalog.array_position(pg_catalog.current_schemas(true), n.nspname)) as o(n) left join pg_catalog.pg_partitioned_table as p on (p.partrelid = c.oid) left join pg_catalog.pg_inherits as i on (c.oid = i.inhparent) where c.relname = 'pgbench_accounts' and o.n is not null group by 1, 2 order by 1 asc limit 1"###,
    ),
    (
        "pgbench startup",
        r###"select count(*) from pgbench_branches"###,
    ),
    ("pgbench", r###"BEGIN;"###),
    ("pgbench", r###"END;"###),
    ("PgJDBC startup", r###"SET extra_float_digits = 3"###),
    (
        "PgJDBC startup",
        r###"SET application_name = 'PostgreSQL JDBC Driver'"###,
    ),
    ("PgJDBC", r###"SHOW TRANSACTION ISOLATION LEVEL"###),
    ("PgJDBC", r###"BEGIN READ ONLY"###),
    ("PgJDBC", r###"SELECT 1"###),
    (
        "PgJDBC getTables",
        r###"SELECT NULL AS TABLE_CAT, n.nspname AS TABLE_SCHEM, c.relname AS TABLE_NAME,  CASE n.nspname ~ '^pg_' OR n.nspname = 'information_schema'  WHEN true THEN CASE  WHEN n.nspname = 'pg_catalog' OR n.nspname = 'information_schema' THEN CASE c.relkind   WHEN 'r' THEN 'SYSTEM TABLE'   WHEN 'v' THEN 'SYSTEM VIEW'   WHEN 'i' THEN 'SYSTEM INDEX'   ELSE NULL   END  WHEN n.nspname = 'pg_toast' THEN CASE c.relkind   WHEN 'r' THEN 'SYSTEM TOAST TABLE'   WHEN 'i' THEN 'SYSTEM TOAST INDEX'   ELSE NULL   END  ELSE CASE c.relkind   WHEN 'r' THEN 'TEMPORARY TABLE'   WHEN 'p' THEN 'TEMPORARY TABLE'   WHEN 'i' THEN 'TEMPORARY INDEX'   WHEN 'S' THEN 'TEMPORARY SEQUENCE'   WHEN 'v' THEN 'TEMPORARY VIEW'   ELSE NULL   END  END  WHEN false THEN CASE c.relkind  WHEN 'r' THEN 'TABLE'  WHEN 'p' THEN 'PARTITIONED TABLE'  WHEN 'i' THEN 'INDEX'  WHEN 'P' then 'PARTITIONED INDEX'  WHEN 'S' THEN 'SEQUENCE'  WHEN 'v' THEN 'VIEW'  WHEN 'c' THEN 'TYPE'  WHEN 'f' THEN 'FOREIGN TABLE'  WHEN 'm' THEN 'MATERIALIZED VIEW'  ELSE NULL  END  ELSE NULL  END  AS TABLE_TYPE, d.description AS REMARKS,  '' as TYPE_CAT, '' as TYPE_SCHEM, '' as TYPE_NAME, '' AS SELF_REFERENCING_COL_NAME, '' AS REF_GENERATION  FROM pg_catalog.pg_namespace n, pg_catalog.pg_class c  LEFT JOIN pg_catalog.pg_description d ON (c.oid = d.objoid AND d.objsubid = 0  and d.classoid = 'pg_class'::regclass)  WHERE c.relnamespace = n.oid  AND c.relname LIKE 'users' AND (false  OR ( c.relkind = 'r' AND n.nspname !~ '^pg_' AND n.nspname <> 'information_schema' ) ) ORDER BY TABLE_TYPE,TABLE_SCHEM,TABLE_NAME"###,
    ),
    (
        "PgJDBC getColumns",
        r###"SELECT * FROM (SELECT n.nspname,c.relname,a.attname,a.atttypid,a.attnotnull OR (t.typtype = 'd' AND t.typnotnull) AS attnotnull,a.atttypmod,a.attlen,t.typtypmod,row_number() OVER (PARTITION BY a.attrelid ORDER BY a.attnum) AS attnum, nullif(a.attidentity, '') as attidentity,nullif(a.attgenerated, '') as attgenerated,pg_catalog.pg_get_expr(def.adbin, def.adrelid) AS adsrc,dsc.description,t.typbasetype,t.typtype  FROM pg_catalog.pg_namespace n  JOIN pg_catalog.pg_class c ON (c.relnamespace = n.oid)  JOIN pg_catalog.pg_attribute a ON (a.attrelid=c.oid)  JOIN pg_catalog.pg_type t ON (a.atttypid = t.oid)  LEFT JOIN pg_catalog.pg_attrdef def ON (a.attrelid=def.adrelid AND a.attnum = def.adnum)  LEFT JOIN pg_catalog.pg_description dsc ON (c.oid=dsc.objoid AND a.attnum = dsc.objsubid)  LEFT JOIN pg_catalog.pg_class dc ON (dc.oid=dsc.classoid AND dc.relname='pg_class')  LEFT JOIN pg_catalog.pg_namespace dn ON (dc.relnamespace=dn.oid AND dn.nspname='pg_catalog')  WHERE c.relkind in ('r','p','v','f','m') and a.attnum > 0 AND NOT a.attisdropped  AND n.nspname LIKE 'public' AND c.relname LIKE 'users') c WHERE true  ORDER BY nspname,c.relname,attnum"###,
    ),
    (
        "PgJDBC getSchemas",
        r###"SELECT nspname AS TABLE_SCHEM, NULL AS TABLE_CATALOG FROM pg_catalog.pg_namespace  WHERE nspname <> 'pg_toast' AND (nspname !~ '^pg_temp_'  OR nspname = (pg_catalog.current_schemas(true))[1]) AND (nspname !~ '^pg_toast_temp_'  OR nspname = replace((pg_catalog.current_schemas(true))[1], 'pg_temp_', 'pg_toast_temp_'))  ORDER BY TABLE_SCHEM"###,
    ),
    (
        "DBeaver",
        r###"SET application_name = 'DBeaver 24.1.0 - Main <postgres>'"###,
    ),
    (
        "DBeaver",
        r###"SET application_name = 'DBeaver 24.1.0 - Metadata <postgres>'"###,
    ),
    ("DBeaver", r###"select current_schema(),session_user"###),
    ("DBeaver", r###"SELECT version()"###),
    (
        "DBeaver",
        r###"select * from pg_catalog.pg_settings where name='standard_conforming_strings'"###,
    ),
    (
        "DBeaver",
        r###"select n.oid,n.*,d.description from pg_catalog.pg_namespace n left outer join pg_catalog.pg_description d on d.objoid=n.oid and d.objsubid=0 and d.classoid='pg_namespace'::regclass order by nspname"###,
    ),
    (
        "DBeaver",
        r###"select c.oid,pg_catalog.pg_total_relation_size(c.oid) as total_rel_size,pg_catalog.pg_relation_size(c.oid) as rel_size FROM pg_catalog.pg_class c WHERE c.relnamespace=$1"###,
    ),
    ("DBeaver", r###"SHOW search_path"###),
    ("DBeaver", r###"SET search_path = public"###),
    ("psycopg", r###"SELECT pg_catalog.version()"###),
    ("psycopg", r###"BEGIN"###),
    ("psycopg", r###"SHOW standard_conforming_strings"###),
    ("psycopg2", r###"SET datestyle TO 'ISO'"###),
    ("psycopg2", r###"SHOW default_transaction_isolation"###),
    (
        "asyncpg reset",
        r###"SELECT pg_advisory_unlock_all();
CLOSE ALL;
UNLISTEN *;
RESET ALL;"###,
    ),
    (
        "asyncpg introspection",
        r###"WITH RECURSIVE typeinfo_tree(oid, ns, name, kind, basetype, elemtype, elemdelim, range_subtype, attrtypoids, attrnames, depth) AS (SELECT ti.oid, ti.ns, ti.name, ti.kind, ti.basetype, ti.elemtype, ti.elemdelim, ti.range_subtype, ti.attrtypoids, ti.attrnames, 0 FROM (SELECT t.oid AS oid, ns.nspname AS ns, t.typname AS name, t.typtype AS kind, (CASE WHEN t.typtype = 'd' THEN (WITH RECURSIVE typebases(oid, depth) AS (SELECT t2.typbasetype AS oid, 0 AS depth FROM pg_type t2 WHERE t2.oid = t.oid UNION ALL SELECT t2.typbasetype AS oid, tb.depth + 1 AS depth FROM pg_type t2, typebases tb WHERE tb.oid = t2.oid AND t2.typbasetype != 0) SELECT oid FROM typebases ORDER BY depth DESC LIMIT 1) ELSE NULL END) AS basetype, t.typelem AS elemtype, elem_t.typdelim AS elemdelim, NULL::oid AS range_subtype, NULL::oid[] AS attrtypoids, NULL::text[] AS attrnames FROM pg_catalog.pg_type AS t INNER JOIN pg_catalog.pg_namespace ns ON (ns.oid = t.typnamespace) LEFT JOIN pg_type elem_t ON (t.typlen = -1 AND t.typelem != 0 AND t.typelem = elem_t.oid)) AS ti WHERE ti.oid = any($1::oid[]) UNION ALL SELECT ti.oid, ti.ns, ti.name, ti.kind, ti.basetype, ti.elemtype, ti.elemdelim, ti.range_subtype, ti.attrtypoids, ti.attrnames, tt.depth + 1 FROM (SELECT t.oid AS oid, ns.nspname AS ns, t.typname AS name, t.typtype AS kind, NULL::oid AS basetype, t.typelem AS elemtype, NULL::"char" AS elemdelim, NULL::oid AS range_subtype, NULL::oid[] AS attrtypoids, NULL::text[] AS attrnames FROM pg_catalog.pg_type AS t INNER JOIN pg_catalog.pg_namespace ns ON (ns.oid = t.typnamespace)) ti, typeinfo_tree tt WHERE (tt.elemtype IS NOT NULL AND ti.oid = tt.elemtype) OR (tt.attrtypoids IS NOT NULL AND ti.oid = any(tt.attrtypoids))) SELECT DISTINCT *, basetype::regtype::text AS basetype_name, elemtype::regtype::text AS elemtype_name, range_subtype::regtype::text AS range_subtype_name FROM typeinfo_tree ORDER BY depth DESC"###,
    ),
    ("node-postgres", r###"SELECT NOW()"###),
];

/// (tool, statement text, expected class) for pgbench's workload and initialisation.
const POSTGRES_WORKLOAD: &[(&str, &str, &str)] = &[
    (
        "pgbench TPC-B",
        r###"UPDATE pgbench_accounts SET abalance = abalance + -4135 WHERE aid = 48213;"###,
        "write",
    ),
    (
        "pgbench TPC-B",
        r###"UPDATE pgbench_tellers SET tbalance = tbalance + -4135 WHERE tid = 7;"###,
        "write",
    ),
    (
        "pgbench TPC-B",
        r###"UPDATE pgbench_branches SET bbalance = bbalance + -4135 WHERE bid = 1;"###,
        "write",
    ),
    (
        "pgbench TPC-B",
        r###"INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (7, 1, 48213, -4135, CURRENT_TIMESTAMP);"###,
        "write",
    ),
    (
        "pgbench -i",
        r###"drop table if exists pgbench_accounts, pgbench_branches, pgbench_history, pgbench_tellers"###,
        "ddl",
    ),
    (
        "pgbench -i",
        r###"create table pgbench_history(tid int,bid int,aid    int,delta int,mtime timestamp,filler char(22))"###,
        "ddl",
    ),
    (
        "pgbench -i",
        r###"create table pgbench_tellers(tid int not null,bid int,tbalance int,filler char(84)) with (fillfactor=100)"###,
        "ddl",
    ),
    (
        "pgbench -i",
        r###"create table pgbench_accounts(aid    int not null,bid int,abalance int,filler char(84)) with (fillfactor=100)"###,
        "ddl",
    ),
    (
        "pgbench -i",
        r###"create table pgbench_branches(bid int not null,bbalance int,filler char(88)) with (fillfactor=100)"###,
        "ddl",
    ),
    (
        "pgbench -i",
        r###"truncate table pgbench_accounts, pgbench_branches, pgbench_history, pgbench_tellers"###,
        "write",
    ),
    (
        "pgbench -i",
        r###"insert into pgbench_branches(bid,bbalance) values(1,0)"###,
        "write",
    ),
    (
        "pgbench -i",
        r###"insert into pgbench_tellers(tid,bid,tbalance) values (1,1,0)"###,
        "write",
    ),
    (
        "pgbench -i",
        r###"copy pgbench_accounts from stdin with (freeze on)"###,
        "write",
    ),
    (
        "pgbench -i",
        r###"vacuum analyze pgbench_branches"###,
        "utility",
    ),
    (
        "pgbench -i",
        r###"alter table pgbench_branches add primary key (bid)"###,
        "ddl",
    ),
    (
        "pgbench -i",
        r###"alter table pgbench_tellers add primary key (tid)"###,
        "ddl",
    ),
];

/// (tool, statement text) for MySQL/MariaDB clients' own statements.
const MYSQL_TOOL_STATEMENTS: &[(&str, &str)] = &[
    ("mysql CLI", r###"select @@version_comment limit 1"###),
    ("mysql CLI", r###"SELECT DATABASE()"###),
    ("mysql CLI", r###"show databases"###),
    ("mysql CLI", r###"show tables"###),
    ("mysql CLI", r###"SET NAMES utf8mb4"###),
    ("mysql CLI", r###"SHOW WARNINGS"###),
    ("mysql CLI", r###"SELECT @@version_comment LIMIT 1"###),
    (
        "Connector/J",
        r###"/* mysql-connector-j-8.0.33 (Revision: 7d6b0800528b6b25c68b52dc10d6c1c8429c100c) */SELECT  @@session.auto_increment_increment AS auto_increment_increment, @@character_set_client AS character_set_client, @@character_set_connection AS character_set_connection, @@character_set_results AS character_set_results, @@character_set_server AS character_set_server, @@collation_server AS collation_server, @@collation_connection AS collation_connection, @@init_connect AS init_connect, @@interactive_timeout AS interactive_timeout, @@license AS license, @@lower_case_table_names AS lower_case_table_names, @@max_allowed_packet AS max_allowed_packet, @@net_write_timeout AS net_write_timeout, @@performance_schema AS performance_schema, @@query_cache_size AS query_cache_size, @@query_cache_type AS query_cache_type, @@sql_mode AS sql_mode, @@system_time_zone AS system_time_zone, @@time_zone AS time_zone, @@transaction_isolation AS transaction_isolation, @@wait_timeout AS wait_timeout"###,
    ),
    ("Connector/J", r###"SET character_set_results = NULL"###),
    ("Connector/J", r###"SET autocommit=1"###),
    (
        "Connector/J",
        r###"SELECT @@session.transaction_read_only"###,
    ),
    (
        "Connector/J",
        r###"SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED"###,
    ),
    (
        "Connector/J",
        r###"SHOW VARIABLES LIKE 'lower_case_table_names'"###,
    ),
    (
        "MariaDB Connector/J",
        r###"set autocommit=1, sql_mode = concat(@@sql_mode,',STRICT_TRANS_TABLES')"###,
    ),
    (
        "MariaDB Connector/J",
        r###"SELECT @@max_allowed_packet,@@system_time_zone,@@time_zone,@@auto_increment_increment"###,
    ),
    ("PyMySQL", r###"SET AUTOCOMMIT = 0"###),
    ("PyMySQL", r###"SELECT VERSION()"###),
    (
        "PyMySQL",
        r###"SET NAMES utf8mb4 COLLATE utf8mb4_general_ci"###,
    ),
    (
        "mysql-connector-python",
        r###"SET NAMES 'utf8mb4' COLLATE 'utf8mb4_general_ci'"###,
    ),
    (
        "mysql-connector-python",
        r###"SET @@session.autocommit = OFF"###,
    ),
    ("mysql-connector-python", r###"SELECT @@version"###),
    ("mysql2", r###"SELECT 1"###),
    ("mysql2", r###"SET NAMES utf8mb4"###),
    ("DBeaver MySQL", r###"SHOW FULL TABLES FROM `shop`"###),
    ("DBeaver MySQL", r###"SHOW COLUMNS FROM `shop`.`orders`"###),
    ("DBeaver MySQL", r###"SHOW CREATE TABLE `shop`.`orders`"###),
    (
        "DBeaver MySQL",
        r###"SELECT * FROM information_schema.SCHEMATA"###,
    ),
    (
        "DBeaver MySQL",
        r###"SHOW SESSION STATUS LIKE 'Ssl_cipher'"###,
    ),
    ("DBeaver MySQL", r###"SHOW ENGINES"###),
    ("DBeaver MySQL", r###"SHOW CHARACTER SET"###),
    ("DBeaver MySQL", r###"SHOW COLLATION"###),
    ("DBeaver MySQL", r###"SELECT CONNECTION_ID()"###),
    ("DBeaver MySQL", r###"USE `shop`"###),
    ("mysqldump", r###"SHOW VARIABLES LIKE 'gtid\_mode'"###),
    ("client", r###"SHOW PROCESSLIST"###),
    ("client", r###"START TRANSACTION"###),
    ("client", r###"COMMIT"###),
    ("client", r###"ROLLBACK"###),
];

fn read_only_safe(class: Class) -> bool {
    matches!(
        class,
        Class::Read | Class::Session | Class::Transaction | Class::Utility
    )
}

fn check_tool_statements(dialect: Dialect, statements: &[(&str, &str)]) {
    let ctx = ReadingContext::new(dialect);
    let mut problems = Vec::new();
    for (tool, sql) in statements {
        let analysis = analyze(sql, &ctx);
        if let Some(f) = &analysis.failure {
            problems.push(format!(
                "{tool}: {sql:?} does not parse: {} at {:?}",
                f.message, f.position
            ));
            continue;
        }
        if analysis.statements.is_empty() {
            problems.push(format!("{tool}: {sql:?} yields no statement"));
        }
        for facts in &analysis.statements {
            if !read_only_safe(facts.class) {
                problems.push(format!(
                    "{tool}: {sql:?} classified {} {:?}",
                    facts.class, facts.kinds
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn postgres_client_tools_are_read_only_safe() {
    assert!(POSTGRES_TOOL_STATEMENTS.len() >= 30);
    check_tool_statements(Dialect::Postgres, POSTGRES_TOOL_STATEMENTS);
}

#[test]
fn mysql_client_tools_are_read_only_safe() {
    assert!(MYSQL_TOOL_STATEMENTS.len() >= 30);
    check_tool_statements(Dialect::Mysql, MYSQL_TOOL_STATEMENTS);
}

#[test]
fn pgbench_workload_parses_and_classifies() {
    let ctx = ReadingContext::new(Dialect::Postgres);
    let mut problems = Vec::new();
    for (tool, sql, class) in POSTGRES_WORKLOAD {
        let analysis = analyze(sql, &ctx);
        match (&analysis.failure, analysis.statements.first()) {
            (Some(f), _) => problems.push(format!("{tool}: {sql:?} does not parse: {}", f.message)),
            (None, Some(facts)) if facts.class.as_str() == *class => {}
            (None, other) => {
                problems.push(format!("{tool}: {sql:?} expected {class}, got {other:?}"))
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
