//! Port-forward API with the fake host: stored with the VM, published while it runs, a taken
//! host port is 409 and keeps nothing, forwards go with the VM.
#![allow(clippy::unwrap_used)]

mod common;

use banger_api::{ErrorCode, OperationStatus, PortForward, PortProto};
use banger_cli::client::ClientError;
use common::Daemon;
use hyper::Method;
use serde_json::json;

fn api_code(err: ClientError) -> ErrorCode {
    match err {
        ClientError::Api(api) => api.code,
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn forwards_are_stored_published_while_running_and_refused_when_taken() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path()).await;
    d.add_image("img", vec![]);
    d.create(json!({"name": "web", "image": "img"})).await;
    d.create(json!({"name": "db", "image": "img", "no_start": true}))
        .await;

    let added: PortForward = d
        .client
        .call(
            Method::POST,
            "/v1/vms/web/ports",
            Some(&json!({"host_port": 8080, "guest_port": 80})),
        )
        .await
        .unwrap();
    assert_eq!(added.proto, PortProto::Tcp);
    assert_eq!(d.fakes.network.published(), vec!["8080/tcp->web"]);

    // The same host port for another VM: 409, nothing stored.
    let err = d
        .client
        .call::<PortForward>(
            Method::POST,
            "/v1/vms/db/ports",
            Some(&json!({"host_port": 8080, "guest_port": 81})),
        )
        .await
        .unwrap_err();
    assert_eq!(api_code(err), ErrorCode::Conflict);
    // A port some other program holds: 409, nothing stored.
    d.fakes.network.occupy_port(9090);
    let err = d
        .client
        .call::<PortForward>(
            Method::POST,
            "/v1/vms/web/ports",
            Some(&json!({"host_port": 9090, "guest_port": 90})),
        )
        .await
        .unwrap_err();
    assert_eq!(api_code(err), ErrorCode::Conflict);
    let list: Vec<PortForward> = d.client.get("/v1/vms/web/ports").await.unwrap();
    assert_eq!(list, vec![added]);
    let list: Vec<PortForward> = d.client.get("/v1/vms/db/ports").await.unwrap();
    assert!(list.is_empty());

    // Port 0 and a bad protocol are 400.
    let err = d
        .client
        .call::<PortForward>(
            Method::POST,
            "/v1/vms/web/ports",
            Some(&json!({"host_port": 0, "guest_port": 80})),
        )
        .await
        .unwrap_err();
    assert_eq!(api_code(err), ErrorCode::InvalidInput);

    // A stopped VM keeps its forward and gets it back when it starts.
    let op = d.post_json("/v1/vms/web/stop", json!(null)).await.unwrap();
    assert_eq!(d.wait(&op).await.status, OperationStatus::Succeeded);
    assert!(d.fakes.network.published().is_empty());
    let op = d.post_json("/v1/vms/web/start", json!(null)).await.unwrap();
    assert_eq!(d.wait(&op).await.status, OperationStatus::Succeeded);
    assert_eq!(d.fakes.network.published(), vec!["8080/tcp->web"]);

    let removed: PortForward = d
        .client
        .call(Method::DELETE, "/v1/vms/web/ports/8080", None::<&()>)
        .await
        .unwrap();
    assert_eq!(removed, added);
    assert!(d.fakes.network.published().is_empty());
    let err = d
        .client
        .call::<PortForward>(Method::DELETE, "/v1/vms/web/ports/8080", None::<&()>)
        .await
        .unwrap_err();
    assert_eq!(api_code(err), ErrorCode::NotFound);
    d.stop().await;
}

#[tokio::test]
async fn publish_on_create_is_applied_and_a_taken_port_refuses_the_create() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path()).await;
    d.add_image("img", vec![]);
    d.create(
        json!({"name": "web", "image": "img", "publish": [{"host_port": 2222, "guest_port": 22}]}),
    )
    .await;
    assert_eq!(d.fakes.network.published(), vec!["2222/tcp->web"]);

    let err = d
        .post_json(
            "/v1/vms",
            json!({"name": "web2", "image": "img", "publish": [{"host_port": 2222, "guest_port": 22}]}),
        )
        .await
        .unwrap_err();
    assert_eq!(api_code(err), ErrorCode::Conflict);
    let names: Vec<String> = d
        .client
        .get::<Vec<banger_api::Vm>>("/v1/vms")
        .await
        .unwrap()
        .into_iter()
        .map(|vm| vm.name.to_string())
        .collect();
    assert_eq!(names, vec!["web"], "the refused create persisted nothing");

    // Deleting the VM removes its forwards.
    let op = d
        .client
        .call::<banger_api::Operation>(Method::DELETE, "/v1/vms/web?force=true", None::<&()>)
        .await
        .unwrap();
    assert_eq!(d.wait(&op).await.status, OperationStatus::Succeeded);
    assert!(d.fakes.network.published().is_empty());
    assert!(d.store().all_port_forwards().unwrap().is_empty());
    d.stop().await;
}
