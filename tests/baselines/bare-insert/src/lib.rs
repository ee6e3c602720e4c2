//! bench-spin's second baseline: per request, open Spin's `default`
//! database, set the four pragmas Kizuna sets on every connection
//! (`busy_timeout`, `foreign_keys`, `synchronous = FULL`,
//! `secure_delete`), and commit one `INSERT` of the request body
//! (autocommit), answering 201. It is the least a durable write costs
//! under Spin on this disk; Kizuna's write routes are compared with it.
//!
//! The bench creates `bench_inserts (id INTEGER PRIMARY KEY, body TEXT NOT
//! NULL)` and switches the file to WAL, as Kizuna's migration does, before
//! `spin up`.

#[cfg(target_arch = "wasm32")]
mod entrypoint {
    use spin_sdk::http::body::IncomingBodyExt as _;
    use spin_sdk::http::{IntoResponse, Request, StatusCode};
    use spin_sdk::sqlite::{Connection, Value};

    const PRAGMAS: [&str; 4] = [
        "PRAGMA busy_timeout = 5000",
        "PRAGMA foreign_keys = ON",
        "PRAGMA synchronous = FULL",
        "PRAGMA secure_delete = ON",
    ];

    #[spin_sdk::http_service]
    async fn insert(request: Request) -> impl IntoResponse {
        match store(request).await {
            Ok(()) => StatusCode::CREATED,
            Err(error) => {
                eprintln!("bare-insert: {error}");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    async fn store(request: Request) -> Result<(), String> {
        let body = request
            .into_body()
            .bytes()
            .await
            .map_err(|e| format!("failed to read the body: {e:?}"))?;
        let body = String::from_utf8_lossy(&body).into_owned();
        let db = Connection::open_default()
            .await
            .map_err(|e| format!("failed to open the default database: {e}"))?;
        for pragma in PRAGMAS {
            run(&db, pragma, Vec::new()).await?;
        }
        run(
            &db,
            "INSERT INTO bench_inserts (body) VALUES (?)",
            vec![Value::Text(body)],
        )
        .await
    }

    async fn run(db: &Connection, sql: &str, params: Vec<Value>) -> Result<(), String> {
        db.execute(sql, params)
            .await
            .map_err(|e| format!("{sql}: {e}"))?
            .collect()
            .await
            .map_err(|e| format!("{sql}: {e}"))?;
        Ok(())
    }
}
