//! Delivery over real TLS (rustls on both sides): a destination's own CA
//! and client certificate reach a receiver that requires mutual TLS; a
//! destination with the wrong CA, or without a client certificate, is
//! refused at the handshake and keeps its delivery for a later attempt.

mod common;

use common::receiver::{Received, Receiver, Tls};
use pathway_gateway::config::Config;
use std::path::PathBuf;
use std::time::Duration;

fn tls_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/tls")
        .join(name)
}

#[tokio::test]
async fn mutual_tls_with_a_destination_ca_and_client_certificate() {
    let receiver = Receiver::start_tls(Tls {
        cert: tls_file("server.pem"),
        key: tls_file("server-key.pem"),
        client_ca: Some(tls_file("ca.pem")),
    })
    .await;
    let (ca, other_ca) = (tls_file("ca.pem"), tls_file("other-ca.pem"));
    let (cert, key) = (tls_file("client.pem"), tls_file("client-key.pem"));
    let toml = format!(
        r#"
        [destinations.good]
        url = "{url}"
        ca = "{ca}"
        client_cert = "{cert}"
        client_key = "{key}"
        [destinations.wrong-ca]
        url = "{url}"
        ca = "{other_ca}"
        client_cert = "{cert}"
        client_key = "{key}"
        [destinations.no-client-cert]
        url = "{url}"
        ca = "{ca}"
        [delivery]
        initial_backoff_ms = 50
        max_backoff_ms = 100
        [routing]
        defaults = false
        [[routing.rules]]
        name = "referrals"
        resource = "ServiceRequest"
        when = "true"
        to = ["good", "wrong-ca", "no-client-cert"]
        "#,
        url = receiver.base,
        ca = ca.display(),
        other_ca = other_ca.display(),
        cert = cert.display(),
        key = key.display(),
    );
    let setup = Config::from_toml(&toml, "test", Vec::<(String, String)>::new())
        .expect("valid configuration")
        .routing;
    let gw = common::start_with(|c| c.routing = setup).await;
    let created = gw
        .post("ServiceRequest", &common::service_request("Patient/p1"))
        .await;
    assert_eq!(created.status, 201, "{}", created.text);

    let log = receiver
        .wait_for(
            "the delivery over mutual TLS",
            Duration::from_secs(10),
            |log| log.iter().any(Received::accepted),
        )
        .await;
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].body["id"], created.json["id"]);

    // The other two are refused at the handshake and retried, never dead.
    let mut errors = std::collections::BTreeMap::new();
    for _ in 0..100 {
        let list = gw
            .get_url(&format!("{}/routing/deliveries?status=pending", gw.root))
            .await;
        errors = list.json["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["attempts"].as_i64().unwrap() >= 2)
            .map(|d| {
                (
                    d["destination"].as_str().unwrap().to_string(),
                    d["last_error"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        if errors.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors["wrong-ca"].contains("invalid peer certificate: UnknownIssuer"),
        "{}",
        errors["wrong-ca"]
    );
    assert!(
        errors["no-client-cert"].contains("https://127.0.0.1"),
        "{}",
        errors["no-client-cert"]
    );
    assert!(
        receiver.tls_failures() >= 2,
        "the receiver refused the handshakes"
    );
    assert_eq!(receiver.received().len(), 1, "nothing else got through");
    gw.stop().await;
}
