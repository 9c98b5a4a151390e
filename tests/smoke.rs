mod common;
use common::*;

#[tokio::test]
async fn smoke() {
    let (gw, _up) = setup().await;
    let t = access_token(&gw, "alice", ALICE_PW).await;
    let r = get_with_token(&gw.url("/api/x"), &t).await;
    assert_eq!(r.seen().uri(), "/x");
}
