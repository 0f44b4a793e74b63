//! `POST /api/events` with publish tokens: the site comes from the request or the token's only
//! site, and the site, every type and the stream must be covered, or nothing is stored.

use serde_json::json;

use crate::common;
use crate::support::{Secured, Tok};

#[tokio::test]
async fn writes_stay_inside_the_publish_tokens_scope() {
    let db = common::test_db().await;
    let server = Secured::start(&db).await;
    let shop = Tok::sites(&["shop"]).only_publish().sign();

    // No site named: the token's only site.
    let (status, answer) = server.post(&json!({"stream": "shop-a", "type": "Viewed", "data": {}}), Some(&shop)).await;
    assert_eq!((status, answer["events"][0]["site"].as_str()), (201, Some("shop")), "{answer}");
    let named = json!({"site": "shop", "stream": "shop-a", "type": "Viewed", "data": {}});
    assert_eq!(server.post(&named, Some(&shop)).await.0, 201);

    let several = Tok::sites(&["shop", "blog"]).only_publish().sign();
    let narrow = Tok::sites(&["shop"]).only_publish().types(&["Viewed"]).streams(&["shop-"]).sign();
    let cases = [
        (&shop, json!({"site": "blog", "stream": "blog-a", "type": "Viewed", "data": {}}), 403, "site \"blog\""),
        (&several, json!({"stream": "shop-b", "type": "Viewed", "data": {}}), 400, "several sites"),
        (&narrow, json!({"stream": "shop-b", "type": "Clicked", "data": {}}), 403, "event type \"Clicked\""),
        (&narrow, json!({"stream": "orders-1", "type": "Viewed", "data": {}}), 403, "stream \"orders-1\""),
        (
            &narrow,
            json!([
                {"stream": "shop-b", "type": "Viewed", "data": 1},
                {"stream": "shop-b", "type": "Clicked", "data": 2}
            ]),
            403,
            "event type \"Clicked\"",
        ),
    ];
    for (token, body, status, words) in cases {
        let (got, answer) = server.post(&body, Some(token)).await;
        assert_eq!(got, status, "{body}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(words), "{body}: {message}");
    }
    // Nothing of the refused writes was stored; the allowed ones were.
    let reader = Tok::sites(&["*"]).sign();
    for (stream, n) in [("shop-a", 2), ("shop-b", 0), ("blog-a", 0), ("orders-1", 0)] {
        let (_, body) = server.get(&format!("/api/streams/{stream}"), Some(&reader)).await;
        assert_eq!(body["events"].as_array().unwrap().len(), n, "{stream}: {body}");
    }
    // A covered write with a several-site token that names its site goes through.
    let ok = json!({"site": "blog", "stream": "blog-a", "type": "Viewed", "data": {}});
    assert_eq!(server.post(&ok, Some(&several)).await.0, 201);
    assert_eq!(server.post(&json!({"stream": "shop-b", "type": "Viewed", "data": 1}), Some(&narrow)).await.0, 201);
    server.stop().await;
}
