//! Bounded fuzzing of a live server with what a client can send: command JSON
//! (valid commands with fields mutated, random JSON, random bytes) as tickets,
//! descriptors and action bodies; SQL strings; and Arrow data of every shape where
//! keys belong (wrong types, nulls, zero rows, dictionaries, nested columns). Every
//! answer must be a gRPC status that is not INTERNAL (a caught panic is INTERNAL),
//! and the server must answer a good lookup afterwards.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, DictionaryArray, Float64Array, Int64Array, ListArray, RecordBatch,
    StringArray,
};
use arrow::datatypes::{Int32Type, Int64Type};
use arrow_flight::{Action, FlightDescriptor, Ticket};
use futures::TryStreamExt;
use proptest::prelude::*;
use quiver_client::{OnlineFeaturesRequest, QuiverClient};
use quiver_e2e::{example_repo, materialize_all, small_data, Server, DAY_US};
use quiver_server::datagen;
use tonic::Code;

/// Valid commands and action bodies the mutations start from.
const SEEDS: &[&str] = &[
    r#"{"get_online_features": {"feature_service": "fraud_v1", "entities": {"cc_num": [4000000000000005]}}}"#,
    r#"{"get_online_features": {"features": ["card_stats:avg_amt_1d", "txn_context"], "entities": {"cc_num": [1], "amt": [1.5], "lat": [0], "lon": [0]}}}"#,
    r#"{"get_historical_features": {"feature_service": "fraud_v1", "entity_sql": "SELECT cc_num, event_timestamp FROM transactions LIMIT 5"}}"#,
    r#"{"start": "2026-01-01T00:00:00Z", "end": "2026-01-05T00:00:00Z", "views": ["card_stats"]}"#,
    r#"{"end": "2026-01-05T00:00:00Z"}"#,
];

/// Values spliced into JSON strings and numbers.
fn odd_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("null".to_string()),
        Just("[]".to_string()),
        Just("{}".to_string()),
        Just("-1".to_string()),
        Just("1e400".to_string()),
        Just("18446744073709551616".to_string()),
        Just("\"\\u0000\"".to_string()),
        Just("\"2262-04-11T23:47:16.854775807Z\"".to_string()),
        Just("\"DROP TABLE transactions\"".to_string()),
        Just("[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]".to_string()),
        "\"[^\"\\\\]{0,40}\"",
        any::<i64>().prop_map(|v| v.to_string()),
    ]
}

/// A seed with one JSON value replaced, or random bytes.
fn command_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => (0..SEEDS.len(), any::<prop::sample::Index>(), odd_value()).prop_map(|(s, at, v)| {
            let seed = SEEDS[s];
            // Replace the value after one of the colons.
            let colons: Vec<usize> = seed.match_indices(':').map(|(i, _)| i).collect();
            let c = colons[at.index(colons.len())];
            let rest = &seed[c + 1..];
            let end = rest.find([',', '}']).map_or(rest.len(), |e| e);
            format!("{}: {v}{}", &seed[..c], &rest[end..]).into_bytes()
        }),
        1 => proptest::collection::vec(any::<u8>(), 0..200),
        1 => "\\PC{0,200}".prop_map(String::into_bytes),
    ]
}

/// SQL a training job might send, mutated.
fn sql() -> impl Strategy<Value = String> {
    prop_oneof![
        "SELECT [a-z_, ()*0-9'=<>+-]{0,80} FROM transactions",
        "[A-Za-z ;'()*0-9=<>+-]{0,120}",
        (1usize..2000).prop_map(|n| format!("SELECT {} AS cc_num", vec!["(1"; n].join("+") + &")".repeat(n))),
        Just("SELECT cc_num, event_timestamp FROM transactions WHERE cc_num IN (SELECT cc_num FROM transactions)".to_string()),
    ]
}

fn key_batch(kind: u8, rows: usize) -> RecordBatch {
    let column: ArrayRef = match kind % 7 {
        0 => Arc::new(Int64Array::from_iter(
            (0..rows).map(|i| (i % 3 != 0).then_some(i as i64)),
        )),
        1 => Arc::new(StringArray::from_iter_values(
            (0..rows).map(|i| format!("{i}x")),
        )),
        2 => Arc::new(Float64Array::from_iter_values((0..rows).map(|i| i as f64))),
        3 => Arc::new(BooleanArray::from_iter((0..rows).map(|i| Some(i % 2 == 0)))),
        4 => Arc::new(
            (0..rows)
                .map(|i| if i % 2 == 0 { "a" } else { "b" })
                .collect::<DictionaryArray<Int32Type>>(),
        ),
        5 => Arc::new(ListArray::from_iter_primitive::<Int64Type, _, _>(
            (0..rows).map(|i| Some(vec![Some(i as i64)])),
        )),
        _ => Arc::new(Int64Array::from(vec![None::<i64>; rows])),
    };
    RecordBatch::try_from_iter([("cc_num", column)]).expect("one column")
}

/// What one fuzzed call may answer.
fn acceptable(result: Result<(), arrow_flight::error::FlightError>) -> Result<(), String> {
    match result {
        Ok(()) => Ok(()),
        Err(arrow_flight::error::FlightError::Tonic(s)) => match s.code() {
            Code::Internal | Code::Unknown => Err(format!("{:?}: {}", s.code(), s.message())),
            _ => Ok(()),
        },
        // Client-side decoding of a (valid) answer never fails.
        Err(e) => Err(format!("client error: {e}")),
    }
}

#[test]
fn a_live_server_answers_every_fuzzed_input_with_a_clean_status() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = example_repo(&small_data());
    let t_us = datagen::EPOCH_US + 15 * DAY_US;
    let (server, client) = rt.block_on(async {
        let server = Server::start_online(dir.path(), t_us * 1000).await;
        let mut client = QuiverClient::connect(server.url()).await.unwrap();
        materialize_all(&mut client, t_us * 1000).await;
        (server, client)
    });
    let cases = std::env::var("QUIVER_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let config = ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let shared = std::cell::RefCell::new(client);
    let ran = std::cell::Cell::new(0u32);
    let strategy = (command_bytes(), sql(), any::<u8>(), 1usize..3000, 0u8..6);
    runner
        .run(&strategy, |(bytes, sql, kind, rows, call)| {
            ran.set(ran.get() + 1);
            let mut client = shared.borrow_mut();
            let session = client.online_session(&OnlineFeaturesRequest::for_service("fraud_v1"));
            let flight = client.flight_client();
            let r = rt.block_on(async {
                match call {
                    0 => flight.do_get(Ticket::new(bytes)).await?.try_collect::<Vec<_>>().await.map(|_| ()),
                    1 => flight.get_flight_info(FlightDescriptor::new_cmd(bytes)).await.map(|_| ()),
                    2 => flight.get_schema(FlightDescriptor::new_cmd(bytes)).await.map(|_| ()),
                    3 => {
                        let name = ["materialize", "materialize_incremental", "status", "x"][kind as usize % 4];
                        flight.do_action(Action::new(name, bytes)).await?.try_collect::<Vec<_>>().await.map(|_| ())
                    }
                    4 => {
                        let cmd = format!(
                            r#"{{"get_historical_features": {{"feature_service": "fraud_v1", "entity_sql": {}}}}}"#,
                            serde_json::Value::String(sql)
                        );
                        flight.get_flight_info(FlightDescriptor::new_cmd(cmd)).await.map(|_| ())
                    }
                    _ => {
                        let mut session = session.unwrap();
                        match session.lookup(key_batch(kind, rows)).await {
                            Ok(_) => Ok(()),
                            Err(quiver_client::Error::Server { code, message }) => {
                                Err(arrow_flight::error::FlightError::Tonic(Box::new(tonic::Status::new(code, message))))
                            }
                            Err(quiver_client::Error::SessionClosed) => Ok(()),
                            Err(e) => Err(arrow_flight::error::FlightError::ExternalError(Box::new(e))),
                        }
                    }
                }
            });
            acceptable(r).map_err(TestCaseError::fail)
        })
        .unwrap();

    assert!(ran.get() >= cases, "{} of {cases} cases ran", ran.get());
    eprintln!("fuzz: {} inputs, no INTERNAL status, no crash", ran.get());
    // Still serving.
    let mut client = shared.into_inner();
    rt.block_on(async {
        let request = OnlineFeaturesRequest::for_service("fraud_v1")
            .with_entity("cc_num", [4_000_000_000_000_005i64]);
        assert_eq!(
            client
                .get_online_features(&request)
                .await
                .unwrap()
                .num_rows(),
            1
        );
        server.stop().await;
    });
}
