//! `geoip.locate`: MaxMind City lookups, shaped as `@maxmind/geoip2-node` returned them.
//!
//! PostHog's plugins received the GeoIP2 City model with camelCase keys
//! (`geonameId`, `isoCode`, `timeZone`, `registeredCountry`, ...) and a `traits` object.
//! We decode the database record generically and rename keys, so every field the database
//! holds reaches the plugin.

use std::net::IpAddr;
use std::path::Path;

use serde_json::{Map, Value};

/// An open MaxMind database, shared by all workers of a process.
pub struct GeoIp {
    reader: maxminddb::Reader<Vec<u8>>,
}

impl std::fmt::Debug for GeoIp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeoIp").field("database_type", &self.reader.metadata().database_type).finish()
    }
}

impl GeoIp {
    /// Opens a `.mmdb` file.
    pub fn open(path: &Path) -> Result<Self, String> {
        maxminddb::Reader::open_readfile(path)
            .map(|reader| Self { reader })
            .map_err(|e| format!("cannot open geoip database {}: {e}", path.display()))
    }

    /// The City record of `ip`, or an error for an invalid or unknown address (PostHog's
    /// 2022 server rejected the promise in both cases).
    pub fn locate(&self, ip: &str) -> Result<Value, String> {
        let addr: IpAddr = ip.trim().parse().map_err(|_| format!("'{ip}' is not a valid IP address"))?;
        let found = self.reader.lookup(addr).map_err(|e| e.to_string())?;
        let network = found.network().map(|n| n.to_string()).ok();
        let record: Option<Value> = found.decode().map_err(|e| e.to_string())?;
        let Some(Value::Object(record)) = record else {
            return Err(format!("The address {ip} is not in the database."));
        };
        let mut out = camel_case_keys(record);
        let traits = out.entry("traits").or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(t) = traits {
            t.insert("ipAddress".into(), Value::String(addr.to_string()));
            if let Some(n) = network {
                t.insert("network".into(), Value::String(n));
            }
        }
        Ok(Value::Object(out))
    }

    /// [`GeoIp::locate`] as JSON text.
    pub fn locate_json(&self, ip: &str) -> Result<String, String> {
        self.locate(ip).map(|v| v.to_string())
    }
}

fn camel_case_keys(map: Map<String, Value>) -> Map<String, Value> {
    map.into_iter()
        .map(|(k, v)| {
            // `names` maps locale codes to names: its keys stay as they are.
            let v = if k == "names" { v } else { camel_case_value(v) };
            (camel(&k), v)
        })
        .collect()
}

fn camel_case_value(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(camel_case_keys(m)),
        Value::Array(items) => Value::Array(items.into_iter().map(camel_case_value).collect()),
        other => other,
    }
}

fn camel(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    let mut upper = false;
    for c in key.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_become_camel_case_except_names() {
        let v: Value = serde_json::json!({"registered_country": {"iso_code": "US", "names": {"pt-BR": "x", "zh_CN": "y"}}});
        let Value::Object(m) = v else { unreachable!() };
        let out = Value::Object(camel_case_keys(m));
        assert_eq!(out["registeredCountry"]["isoCode"], "US");
        assert_eq!(out["registeredCountry"]["names"]["zh_CN"], "y");
    }
}
