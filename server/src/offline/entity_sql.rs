//! The one door for SQL a client sends: `entity_sql` (on GetFlightInfo and DoGet)
//! and Flight SQL queries ([`sql_catalog`](super::sql_catalog)) both pass it.
//!
//! ```text
//! sql ─ size cap ─ parse once ─ one SELECT? ─ depth cap ─ plan on a per-request
//!       session (sources only, no files or URLs, no string/array builders)
//!     ─ read-only check ─ stream, counting rows and reserving memory in the pool
//! ```
//!
//! Nothing a client writes can change another client's session: each request plans
//! on its own copy of the SQL session state, which has only the registered sources
//! as tables (no URL tables, no `information_schema`), and DDL, DML and statements
//! such as `SET` are refused before anything runs. The results are streamed under
//! the server's memory pool, so a cross join or a huge spine fails with a clear
//! error instead of growing memory outside it; dropping the stream (the client went
//! away, the deadline passed) cancels the query.

use std::ops::ControlFlow;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion::dataframe::DataFrame;
use datafusion::execution::context::SQLOptions;
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::{DFParserBuilder, Statement as DFStatement};
use datafusion::sql::sqlparser::ast::{Expr, Query, Statement, Visit, Visitor};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
use futures::StreamExt;

use super::spine_spill::ReceivedSpine;
use super::{Error, OfflineStore, Result};

/// Functions whose output size the caller chooses with one argument
/// (`repeat('x', 2147483647)`): they allocate outside the memory pool, so they are
/// not available to client SQL. A spine query has no use for them.
pub(crate) const UNAVAILABLE_FUNCTIONS: &[&str] = &[
    "repeat",
    "lpad",
    "rpad",
    "array_repeat",
    "list_repeat",
    "range",
    "generate_series",
    "gen_series",
];

/// Operators allowed per level of `max_expr_depth` (1,024 at the default 64).
const OPERATORS_PER_DEPTH: usize = 16;

/// Parser recursion (parentheses, subqueries) allowed while parsing client SQL.
const PARSER_RECURSION_LIMIT: usize = 64;

/// Bounds on one client SQL query (from `server.limits`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SqlLimits {
    /// Longest SQL text, in bytes.
    pub max_bytes: usize,
    /// Deepest expression or subquery nesting.
    pub max_depth: usize,
    /// Most rows the query may return; 0 = no limit.
    pub max_rows: usize,
}

impl Default for SqlLimits {
    fn default() -> Self {
        let l = crate::config::Limits::default();
        Self::from(&l)
    }
}

impl From<&crate::config::Limits> for SqlLimits {
    fn from(l: &crate::config::Limits) -> Self {
        Self {
            max_bytes: l.max_sql_bytes,
            max_depth: l.max_expr_depth,
            max_rows: l.max_spine_rows,
        }
    }
}

/// The SQL session every request's session is copied from: the sources as tables,
/// minus [`UNAVAILABLE_FUNCTIONS`].
pub(crate) fn sql_session(ctx: &SessionContext) -> SessionContext {
    let sql = SessionContext::new_with_state(ctx.state());
    remove_unavailable_functions(&sql);
    sql
}

/// Removes [`UNAVAILABLE_FUNCTIONS`] from `ctx`.
pub(crate) fn remove_unavailable_functions(ctx: &SessionContext) {
    for name in UNAVAILABLE_FUNCTIONS {
        ctx.deregister_udf(name);
        ctx.deregister_udtf(name);
    }
}

/// Finds the deepest expression or query nesting, stopping once past `limit`.
struct Depth {
    now: usize,
    max: usize,
    limit: usize,
}

impl Depth {
    fn enter(&mut self) -> ControlFlow<()> {
        self.now += 1;
        self.max = self.max.max(self.now);
        if self.now > self.limit {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }
}

impl Visitor for Depth {
    type Break = ();

    fn pre_visit_expr(&mut self, _: &Expr) -> ControlFlow<()> {
        self.enter()
    }

    fn post_visit_expr(&mut self, _: &Expr) -> ControlFlow<()> {
        self.now -= 1;
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, _: &Query) -> ControlFlow<()> {
        self.enter()
    }

    fn post_visit_query(&mut self, _: &Query) -> ControlFlow<()> {
        self.now -= 1;
        ControlFlow::Continue(())
    }
}

/// Operators (`+`, `=`, `AND`, `OR`, ...) in `sql`: a chain of them parses into an
/// expression as deep as it is long, which even dropping walks recursively, so
/// their number is capped before parsing.
fn operators(sql: &str, dialect: &GenericDialect, what: &str) -> Result<usize> {
    let tokens = Tokenizer::new(dialect, sql)
        .tokenize()
        .map_err(|e| Error::invalid(format!("{what} does not parse: {e}")))?;
    let is_operator = |t: &Token| match t {
        Token::Word(w) => matches!(w.keyword, Keyword::AND | Keyword::OR),
        Token::Whitespace(_)
        | Token::Comma
        | Token::LParen
        | Token::RParen
        | Token::Period
        | Token::SemiColon
        | Token::EOF => false,
        other => {
            let text = other.to_string();
            !text.is_empty() && text.chars().all(|c| c.is_ascii_punctuation())
        }
    };
    Ok(tokens.iter().filter(|t| is_operator(t)).count())
}

/// Checks `sql` against `limits` and parses it into its one query statement.
#[cfg(test)]
fn parse(sql: &str, limits: &SqlLimits) -> Result<Statement> {
    parse_as(sql, limits, "entity_sql")
}

/// [`parse`], naming the SQL `what` in errors.
fn parse_as(sql: &str, limits: &SqlLimits, what: &str) -> Result<Statement> {
    if sql.len() > limits.max_bytes {
        return Err(Error::invalid(format!(
            "{what} is {} bytes; the server accepts at most {} (server.limits.max_sql_bytes)",
            sql.len(),
            limits.max_bytes
        )));
    }
    let dialect = GenericDialect {};
    let max_operators = limits.max_depth.saturating_mul(OPERATORS_PER_DEPTH);
    let n = operators(sql, &dialect, what)?;
    if n > max_operators {
        return Err(Error::invalid(format!(
            "{what} has {n} operators; the server accepts at most {max_operators} \
             ({OPERATORS_PER_DEPTH} x server.limits.max_expr_depth); \
             for many keys use `key IN (...)` or a join rather than a chain of ORs"
        )));
    }
    let mut statements = DFParserBuilder::new(sql)
        .with_dialect(&dialect)
        .with_recursion_limit(PARSER_RECURSION_LIMIT)
        .build()
        .and_then(|mut p| p.parse_statements())
        .map_err(|e| Error::invalid(format!("{what} does not parse: {e}")))?;
    let only_select = format!(
        "{what} must be exactly one read-only query (SELECT or WITH ... SELECT): \
         the offline store cannot be changed over SQL"
    );
    if statements.len() != 1 {
        return Err(Error::invalid(only_select));
    }
    let statement = match statements.pop_front() {
        Some(DFStatement::Statement(s)) if matches!(*s, Statement::Query(_)) => *s,
        _ => return Err(Error::invalid(only_select)),
    };
    let mut depth = Depth {
        now: 0,
        max: 0,
        limit: limits.max_depth,
    };
    if statement.visit(&mut depth).is_break() {
        return Err(Error::invalid(format!(
            "{what} nests expressions or subqueries more than {} deep (server.limits.max_expr_depth); \
             for many keys use `key IN (...)` or a join rather than a chain of ORs",
            limits.max_depth
        )));
    }
    Ok(statement)
}

/// Plans a client's query on a copy of `ctx`'s session (so nothing it does can
/// change another client's), after [`parse`]'s checks and the read-only check;
/// nothing runs. `what` names the SQL in errors.
pub(crate) async fn plan_client_sql(
    ctx: &SessionContext,
    sql: &str,
    limits: &SqlLimits,
    what: &str,
) -> Result<DataFrame> {
    let statement = parse_as(sql, limits, what)?;
    let state = ctx.state();
    let plan = state
        .statement_to_plan(datafusion::sql::parser::Statement::Statement(Box::new(
            statement,
        )))
        .await
        .map_err(|e| Error::invalid(format!("{what}: {}", e.find_root())))?;
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
        .verify_plan(&plan)
        .map_err(|e| Error::invalid(format!("{what}: {}", e.find_root())))?;
    Ok(DataFrame::new(state, plan))
}

impl OfflineStore {
    /// Plans a client's `entity_sql` on a session of its own; nothing runs.
    pub(crate) async fn plan_entity_sql(&self, sql: &str) -> Result<DataFrame> {
        plan_client_sql(&self.sql_ctx, sql, &self.sql_limits, "entity_sql").await
    }

    /// The schema of the spine an `entity_sql` query produces, without running it.
    pub(crate) async fn spine_schema_from_sql(&self, sql: &str) -> Result<SchemaRef> {
        Ok(Arc::new(
            self.plan_entity_sql(sql).await?.schema().as_arrow().clone(),
        ))
    }

    /// Runs a spine-producing `entity_sql` query: its schema and its batches, held
    /// in the memory pool (past `server.spine_memory_mb`, on disk) and at most
    /// `max_rows` rows. Dropping the future cancels it.
    pub(crate) async fn spine_from_sql(&self, sql: &str) -> Result<(SchemaRef, ReceivedSpine)> {
        let df = self.plan_entity_sql(sql).await?;
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        let mut spine = self.spilling_spine_buffer("entity_sql");
        let mut stream = df.execute_stream().await?;
        while let Some(batch) = stream.next().await {
            spine.push(batch?)?;
        }
        Ok((schema, spine.into_spine()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> SqlLimits {
        SqlLimits {
            max_bytes: 4096,
            max_depth: 16,
            max_rows: 0,
        }
    }

    #[test]
    fn only_one_select() {
        for sql in [
            "DROP TABLE transactions",
            "CREATE EXTERNAL TABLE p STORED AS CSV LOCATION '/etc/passwd'",
            "SET datafusion.execution.batch_size = 1",
            "SELECT 1; SELECT 2",
            "INSERT INTO transactions VALUES (1)",
            "EXPLAIN SELECT 1",
            "COPY transactions TO '/tmp/x.parquet'",
        ] {
            let e = parse(sql, &limits()).unwrap_err().to_string();
            assert!(e.contains("exactly one read-only query"), "{sql}: {e}");
        }
        parse(
            "WITH t AS (SELECT 1 AS a) SELECT a FROM t WHERE a IN (1, 2, 3)",
            &limits(),
        )
        .unwrap();
    }

    #[test]
    fn depth_and_size_are_capped() {
        let deep = format!("SELECT {}", vec!["1"; 1000].join(" + "));
        let e = parse(
            &deep,
            &SqlLimits {
                max_bytes: 1 << 20,
                ..limits()
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("max_expr_depth"), "{e}");
        let ors = (0..1000)
            .map(|i| format!("cc_num = {}", 4_000_000_000_000_000u64 + i))
            .collect::<Vec<_>>()
            .join(" OR ");
        let sql = format!("SELECT * FROM t WHERE {ors}");
        let e = parse(
            &sql,
            &SqlLimits {
                max_bytes: 1 << 20,
                ..limits()
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("max_expr_depth"), "{e}");
        let e = parse(&sql, &limits()).unwrap_err();
        assert!(e.to_string().contains("max_sql_bytes"), "{e}");
        let nested = format!("SELECT {}1{}", "(".repeat(200), ")".repeat(200));
        assert!(parse(
            &nested,
            &SqlLimits {
                max_bytes: 1 << 20,
                ..limits()
            }
        )
        .is_err());
        parse(&format!("SELECT {}", ["1"; 10].join(" + ")), &limits()).unwrap();
    }

    #[test]
    fn a_64k_chain_is_refused_without_overflowing() {
        // The largest text the default limit lets through, as deep as it can be.
        let n = (64 << 10) / 2 - 8;
        let sql = format!("SELECT {}", vec!["1"; n].join("+"));
        let sql = &sql[..sql.len().min(64 << 10)];
        let e = parse(sql, &SqlLimits::default()).unwrap_err();
        assert!(e.to_string().contains("max_expr_depth"), "{e}");
        // An IN list of 3,000 cards is fine.
        let cards = (0..3000)
            .map(|i| (4_000_000_000_000_000u64 + i).to_string())
            .collect::<Vec<_>>()
            .join(",");
        parse(
            &format!("SELECT * FROM t WHERE cc_num IN ({cards}) AND a = 'x' OR b <= 2"),
            &SqlLimits::default(),
        )
        .unwrap();
    }
}
