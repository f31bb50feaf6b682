//! Feast's remote offline-store protocol, answered on the native Flight port.
//!
//! ```text
//! DoExchange(CMD = {"command_id", "api", ...}, table in) ─> result out (Feast 0.67's reads)
//! DoPut(CMD = {"command_id", "api", ...}, table) ── put-only APIs run here
//!                                                └─ retrievals (older clients) are kept as a Flight
//! GetFlightInfo(same CMD) ─> ticket "feast:<command_id>"
//! DoGet(ticket) ─> the result, and the flight is forgotten
//! ```
//!
//! | `api`                                              | does                                         |
//! |----------------------------------------------------|----------------------------------------------|
//! | `get_historical_features`                          | the training set for the entity df (or SQL)  |
//! | `pull_latest_from_table_or_query`                  | latest row per key in [start, end]           |
//! | `pull_all_from_table_or_query`                     | every row in [start, end] (`feast materialize`) |
//! | `get_table_column_names_and_types_from_data_source`| `{name, type}` rows, pyarrow's type names     |
//! | `validate_data_source`                             | checks the source exists                     |
//! | `offline_write_batch`                              | the rows into the view's source, offline     |
//!
//! This module knows the commands and the flights kept between calls; the Flight
//! service (flight) runs them. Errors reach Feast's client in its own shape:
//! `Flight error: {"module", "class", "message"}`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, SchemaRef};
use serde::Deserialize;
use serde_json::Value;

/// Flights kept at most (a client that never fetches cannot grow memory).
const MAX_FLIGHTS: usize = 64;
/// A flight not fetched within this long is forgotten.
const FLIGHT_TTL: Duration = Duration::from_secs(600);
/// The prefix of the tickets of Feast flights.
pub(crate) const TICKET_PREFIX: &[u8] = b"feast:";

/// A Feast command: the JSON of the CMD descriptor.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Command {
    /// The client's id for this call (a fresh uuid per call).
    pub command_id: String,
    /// Which offline-store method.
    pub api: String,
    /// The method's parameters.
    #[serde(flatten)]
    pub params: serde_json::Map<String, Value>,
}

/// `get_historical_features`'s parameters.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Historical {
    /// Views the refs come from.
    pub feature_view_names: Vec<String>,
    /// `view:feature` refs.
    pub feature_refs: Vec<String>,
    /// `view__feature` column names.
    #[serde(default)]
    pub full_feature_names: bool,
    /// The entity df as SQL over the offline store's sources.
    #[serde(default)]
    pub entity_df_sql: Option<String>,
    /// Non-entity retrieval's end (Quiver needs an entity df).
    #[serde(default)]
    pub end_date: Option<String>,
}

/// `pull_*_from_table_or_query`'s parameters.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Pull {
    /// The source.
    pub data_source_name: String,
    /// Key columns.
    pub join_key_columns: Vec<String>,
    /// Feature columns.
    pub feature_name_columns: Vec<String>,
    /// Event time column.
    pub timestamp_field: String,
    /// Ingestion time column.
    #[serde(default)]
    pub created_timestamp_column: Option<String>,
    /// Inclusive start (unbounded when null).
    #[serde(default)]
    pub start_date: Option<String>,
    /// Inclusive end (unbounded when null).
    #[serde(default)]
    pub end_date: Option<String>,
}

/// What the entity df's DoPut carried.
#[derive(Debug, Default)]
pub(crate) struct Upload {
    /// Its schema (none when the client sent no data).
    pub schema: Option<SchemaRef>,
    /// Its rows.
    pub batches: Vec<RecordBatch>,
    /// Their memory in the engine's pool, held as long as the rows are (never
    /// read: dropping it releases the memory).
    #[allow(dead_code)]
    pub held: Option<datafusion::execution::memory_pool::MemoryReservation>,
}

impl Upload {
    /// Feast's placeholder for "no table": one column named `key`.
    pub(crate) fn is_placeholder(&self) -> bool {
        match &self.schema {
            None => true,
            Some(s) => s.fields().len() == 1 && s.field(0).name() == "key",
        }
    }
}

/// Parses `cmd` if it is a Feast command (a JSON object with `"api"`); `None`
/// for anything else (Quiver's own commands).
pub(crate) fn parse(cmd: &[u8]) -> Option<Result<Command, String>> {
    let value: Value = serde_json::from_slice(cmd).ok()?;
    let obj = value.as_object()?;
    if !obj.contains_key("api") {
        return None;
    }
    Some(
        serde_json::from_value(value)
            .map_err(|e| format!("a Feast command needs \"command_id\" and \"api\": {e}")),
    )
}

/// The parameters of `command` as `T`, or what is missing.
pub(crate) fn params<T: serde::de::DeserializeOwned>(command: &Command) -> Result<T, String> {
    serde_json::from_value(Value::Object(command.params.clone()))
        .map_err(|e| format!("{}: {e}", command.api))
}

/// The data source a `data_source_proto` parameter (Feast's `MessageToJson` of a
/// `DataSource`) names.
pub(crate) fn data_source_name(command: &Command) -> Result<String, String> {
    let text = (command.params.get("data_source_proto"))
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{}: needs \"data_source_proto\"", command.api))?;
    let proto: Value = serde_json::from_str(text)
        .map_err(|e| format!("{}: data_source_proto is not JSON: {e}", command.api))?;
    let name = proto
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    // A push source's batch source is the table.
    let batch = (proto
        .get("batchSource")
        .or_else(|| proto.get("batch_source")))
    .and_then(|b| b.get("name"))
    .and_then(Value::as_str);
    Ok(batch.unwrap_or(name).to_string())
}

/// A Feast-shaped error message: Feast's client re-raises `class` from `module`.
pub(crate) fn error_message(class: &str, message: &str) -> String {
    let detail = serde_json::json!({
        "module": "feast.errors",
        "class": class,
        "message": message,
    });
    format!("Flight error: {detail}")
}

/// pyarrow's name of an Arrow type (what Feast maps to its value types).
pub(crate) fn pyarrow_type_name(t: &DataType) -> String {
    use arrow::datatypes::TimeUnit;
    let unit = |u: &TimeUnit| match u {
        TimeUnit::Second => "s",
        TimeUnit::Millisecond => "ms",
        TimeUnit::Microsecond => "us",
        TimeUnit::Nanosecond => "ns",
    };
    match t {
        DataType::Boolean => "bool".into(),
        DataType::Int8 => "int8".into(),
        DataType::Int16 => "int16".into(),
        DataType::Int32 => "int32".into(),
        DataType::Int64 => "int64".into(),
        DataType::UInt8 => "uint8".into(),
        DataType::UInt16 => "uint16".into(),
        DataType::UInt32 => "uint32".into(),
        DataType::UInt64 => "uint64".into(),
        DataType::Float16 => "halffloat".into(),
        DataType::Float32 => "float".into(),
        DataType::Float64 => "double".into(),
        DataType::Utf8 | DataType::Utf8View => "string".into(),
        DataType::LargeUtf8 => "large_string".into(),
        DataType::Binary | DataType::BinaryView => "binary".into(),
        DataType::Date32 => "date32[day]".into(),
        DataType::Timestamp(u, None) => format!("timestamp[{}]", unit(u)),
        DataType::Timestamp(u, Some(tz)) => format!("timestamp[{}, tz={tz}]", unit(u)),
        DataType::List(f) => format!("list<item: {}>", pyarrow_type_name(f.data_type())),
        other => other.to_string().to_lowercase(),
    }
}

/// Feast's ISO-8601 instants (naive = UTC) as nanoseconds since the epoch.
pub(crate) fn instant(s: &str) -> Result<i64, String> {
    let v = super::utc_instant(Value::String(s.to_string()));
    crate::instant::parse(v.as_str().unwrap_or(s))
}

/// A retrieval kept from its DoPut until its DoGet.
#[derive(Debug)]
pub(crate) struct Flight {
    /// The command.
    pub command: Command,
    /// The uploaded table.
    pub upload: Upload,
    /// Who put it: only they may fetch it.
    owner: String,
    at: Instant,
}

/// The retrievals between DoPut and DoGet, by command id.
#[derive(Debug, Default)]
pub(crate) struct Flights {
    map: Mutex<HashMap<String, Flight>>,
}

impl Flights {
    /// Keeps `owner`'s retrieval; forgets expired ones and refuses past
    /// [`MAX_FLIGHTS`] (and past half of them for one owner).
    pub(crate) fn put(&self, owner: &str, command: Command, upload: Upload) -> Result<(), String> {
        let mut map = self.map.lock().expect("not poisoned");
        map.retain(|_, f| f.at.elapsed() < FLIGHT_TTL);
        let mine = map.values().filter(|f| f.owner == owner).count();
        if !map.contains_key(&command.command_id)
            && (map.len() >= MAX_FLIGHTS || mine >= MAX_FLIGHTS / 2)
        {
            return Err(format!(
                "{} Feast retrievals are waiting to be fetched; fetch them (GetFlightInfo, DoGet) or retry later",
                map.len()
            ));
        }
        map.insert(
            command.command_id.clone(),
            Flight {
                command,
                upload,
                owner: owner.to_string(),
                at: Instant::now(),
            },
        );
        Ok(())
    }

    /// The command of `owner`'s waiting retrieval `id`.
    pub(crate) fn command(&self, owner: &str, id: &str) -> Option<Command> {
        let map = self.map.lock().expect("not poisoned");
        (map.get(id))
            .filter(|f| f.owner == owner)
            .map(|f| f.command.clone())
    }

    /// Takes `owner`'s retrieval `id` (it is answered once).
    pub(crate) fn take(&self, owner: &str, id: &str) -> Option<Flight> {
        let mut map = self.map.lock().expect("not poisoned");
        if map.get(id).is_some_and(|f| f.owner == owner) {
            map.remove(id)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feast_commands_are_told_from_quiver_ones() {
        assert!(parse(br#"{"get_historical_features": {}}"#).is_none());
        assert!(parse(b"not json").is_none());
        let c = parse(br#"{"command_id": "x", "api": "validate_data_source", "data_source_proto": "{\"name\": \"s\", \"batchSource\": {\"name\": \"b\"}}"}"#)
            .unwrap()
            .unwrap();
        assert_eq!(c.api, "validate_data_source");
        assert_eq!(data_source_name(&c).unwrap(), "b");
        assert!(parse(br#"{"api": "x"}"#).unwrap().is_err());
    }

    #[test]
    fn errors_are_in_feasts_shape_and_types_in_pyarrows_words() {
        let m = error_message("FeastError", "bad \"ref\"");
        let json: Value = serde_json::from_str(m.strip_prefix("Flight error: ").unwrap()).unwrap();
        assert_eq!(json["class"], "FeastError");
        assert_eq!(json["message"], "bad \"ref\"");
        use arrow::datatypes::TimeUnit;
        assert_eq!(
            pyarrow_type_name(&DataType::Timestamp(
                TimeUnit::Microsecond,
                Some("UTC".into())
            )),
            "timestamp[us, tz=UTC]"
        );
        assert_eq!(pyarrow_type_name(&DataType::Float64), "double");
        assert_eq!(
            instant("2026-01-01T00:00:00").unwrap(),
            instant("2026-01-01T00:00:00+00:00").unwrap()
        );
    }

    #[test]
    fn flights_are_bounded_and_taken_once() {
        let flights = Flights::default();
        let cmd = |id: &str| Command {
            command_id: id.into(),
            api: "get_historical_features".into(),
            params: Default::default(),
        };
        for i in 0..MAX_FLIGHTS / 2 {
            flights
                .put("a", cmd(&i.to_string()), Upload::default())
                .unwrap();
        }
        // One owner holds at most half.
        assert!(flights
            .put("a", cmd("one more"), Upload::default())
            .is_err());
        for i in MAX_FLIGHTS / 2..MAX_FLIGHTS {
            flights
                .put("b", cmd(&i.to_string()), Upload::default())
                .unwrap();
        }
        assert!(flights
            .put("c", cmd("one more"), Upload::default())
            .is_err());
        // Only the owner sees and takes a flight, once.
        assert!(flights.command("b", "0").is_none());
        assert!(flights.take("b", "0").is_none());
        assert!(flights.command("a", "0").is_some());
        assert!(flights.take("a", "0").is_some());
        assert!(flights.take("a", "0").is_none());
        flights
            .put("c", cmd("one more"), Upload::default())
            .unwrap();
    }
}
