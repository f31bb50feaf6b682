//! [`OnlineSession`]: online lookups over one long-lived DoExchange stream.
//!
//! ```text
//! lookup(keys) ──mpsc──> FlightDataEncoder ──DoExchange──> server
//!      ^                                                     │
//!      └──────────── one answer batch per key batch <────────┘
//! ```
//!
//! The stream opens on the first lookup and stays open; each lookup costs one
//! encoded batch each way and nothing else (no JSON, no new HTTP/2 stream).

use arrow::record_batch::RecordBatch;
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::FlightDescriptor;
use futures::{StreamExt, TryStreamExt};
use tokio::sync::mpsc;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

use crate::error::{Error, Result};
use crate::protocol::{Command, OnlineFeaturesRequest};

/// A long-lived online lookup stream. Not `Clone`: open one per task (they share
/// the client's connection).
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use arrow::array::{Int64Array, RecordBatch};
/// use quiver_client::{OnlineFeaturesRequest, QuiverClient};
/// let client = QuiverClient::connect("127.0.0.1:8815").await?;
/// let mut session = client.online_session(&OnlineFeaturesRequest::for_service("fraud_v1"))?;
/// let keys = RecordBatch::try_from_iter([("cc_num", Arc::new(Int64Array::from(vec![4000000000000005])) as _)])?;
/// let features = session.lookup(keys).await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct OnlineSession {
    client: FlightServiceClient<Channel>,
    request: OnlineFeaturesRequest,
    authorization: Option<MetadataValue<Ascii>>,
    open: Option<Open>,
}

#[derive(Debug)]
struct Open {
    tx: mpsc::Sender<RecordBatch>,
    answers: FlightRecordBatchStream,
}

impl OnlineSession {
    pub(crate) fn new(
        client: FlightServiceClient<Channel>,
        request: OnlineFeaturesRequest,
        authorization: Option<MetadataValue<Ascii>>,
    ) -> Self {
        Self {
            client,
            request,
            authorization,
            open: None,
        }
    }

    /// Sends one batch of entity keys (a column per join key) and returns the
    /// batch's columns followed by the features, rows in the same order.
    ///
    /// After an error the stream is closed; the next lookup opens a new one.
    pub async fn lookup(&mut self, keys: RecordBatch) -> Result<RecordBatch> {
        let rows = keys.num_rows();
        let result = self.exchange(keys, rows).await;
        if result.is_err() {
            self.open = None;
        }
        result
    }

    async fn exchange(&mut self, keys: RecordBatch, rows: usize) -> Result<RecordBatch> {
        if self.open.is_none() {
            let (tx, rx) = mpsc::channel::<RecordBatch>(16);
            tx.send(keys).await.map_err(|_| Error::SessionClosed)?;
            let cmd = Command::GetOnlineFeatures(self.request.clone()).to_bytes();
            let input = FlightDataEncoderBuilder::new()
                .with_max_flight_data_size(usize::MAX)
                .with_flight_descriptor(Some(FlightDescriptor::new_cmd(cmd)))
                .build(tokio_stream_of(rx))
                .take_while(|m| futures::future::ready(m.is_ok()))
                .filter_map(|m| async move { m.ok() });
            let mut call = tonic::Request::new(input);
            if let Some(v) = &self.authorization {
                call.metadata_mut().insert("authorization", v.clone());
            }
            let response = self
                .client
                .do_exchange(call)
                .await
                .map_err(|s| Error::from(FlightError::Tonic(Box::new(s))))?;
            let answers = FlightRecordBatchStream::new_from_flight_data(
                response
                    .into_inner()
                    .map_err(|s| FlightError::Tonic(Box::new(s))),
            );
            self.open = Some(Open { tx, answers });
        } else if let Some(open) = &self.open {
            open.tx.send(keys).await.map_err(|_| Error::SessionClosed)?;
        }
        let open = self.open.as_mut().expect("opened above");
        let mut parts: Vec<RecordBatch> = Vec::with_capacity(1);
        let mut got = 0;
        while got < rows || parts.is_empty() {
            let batch = open.answers.try_next().await?.ok_or(Error::SessionClosed)?;
            got += batch.num_rows();
            parts.push(batch);
        }
        if parts.len() == 1 {
            return Ok(parts.pop().expect("one part"));
        }
        arrow::compute::concat_batches(&parts[0].schema(), &parts)
            .map_err(|e| Error::Flight(FlightError::Arrow(e)))
    }
}

fn tokio_stream_of(
    mut rx: mpsc::Receiver<RecordBatch>,
) -> impl futures::Stream<Item = Result<RecordBatch, FlightError>> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|b| b.map(Ok)))
}
