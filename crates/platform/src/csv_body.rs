//! CSV answers for list routes: `?format=csv` or `Accept: text/csv`, always with a header line.

use crate::Problem;
use actix_web::{HttpRequest, HttpResponse};
use serde::Serialize;

/// Whether the caller asked for CSV (`?format=csv` or `Accept: text/csv`).
pub fn wanted(req: &HttpRequest, format: Option<&str>) -> bool {
    format == Some("csv")
        || req
            .headers()
            .get("accept")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/csv"))
}

/// The rows as CSV, with a header line even when there are none (taken from a default row).
pub fn response<R: Serialize + Default>(rows: &[R]) -> Result<HttpResponse, Problem> {
    let mut w = csv::Writer::from_writer(Vec::new());
    if rows.is_empty() {
        w.serialize(R::default()).map_err(Problem::internal)?;
    }
    for r in rows {
        w.serialize(r).map_err(Problem::internal)?;
    }
    let mut body = w.into_inner().map_err(Problem::internal)?;
    if rows.is_empty() {
        let end = body
            .iter()
            .position(|&b| b == b'\n')
            .map_or(body.len(), |i| i + 1);
        body.truncate(end);
    }
    Ok(HttpResponse::Ok()
        .content_type("text/csv; charset=utf-8")
        .body(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Default)]
    struct Row {
        a: u32,
        b: String,
    }

    #[actix_web::test]
    async fn empty_lists_keep_their_header() {
        let r = response::<Row>(&[]).unwrap();
        let body = actix_web::body::to_bytes(r.into_body()).await.unwrap();
        assert_eq!(&body[..], b"a,b\n");
        let r = response(&[Row {
            a: 1,
            b: "x".into(),
        }])
        .unwrap();
        let body = actix_web::body::to_bytes(r.into_body()).await.unwrap();
        assert_eq!(&body[..], b"a,b\n1,x\n");
    }
}
