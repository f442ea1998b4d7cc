//! `pvdir list`: every volume the controller knows, following ListVolumes pages.

use std::collections::HashSet;
use std::time::Duration;

use super::args::ListArgs;
use super::client::Client;
use super::values::{format_size, topologies};
use super::CtlError;
use crate::csi::proto as csi;

/// Entries asked for per page: small enough to bound one reply, large enough to be few calls.
const PAGE: i32 = 500;
/// Far beyond any real listing (50 million volumes); a driver that pages on forever stops here.
const MAX_PAGES: usize = 100_000;

pub async fn run(args: ListArgs) -> Result<(), CtlError> {
    let timeout = Duration::from_secs(args.driver.timeout_secs);
    let c = Client::connect(&args.driver.endpoint, timeout).await?;
    let volumes = all_volumes(&c).await?;
    if volumes.is_empty() {
        eprintln!("no volumes");
        return Ok(());
    }
    let rows: Vec<[String; 3]> = volumes
        .iter()
        .map(|v| {
            [
                v.volume_id.clone(),
                format_size(v.capacity_bytes),
                topologies(&v.accessible_topology),
            ]
        })
        .collect();
    let width = |col: usize| rows.iter().map(|r| r[col].len()).max().unwrap_or(0);
    let (w0, w1) = (
        width(0).max("VOLUME ID".len()),
        width(1).max("CAPACITY".len()),
    );
    println!("{:<w0$}  {:<w1$}  TOPOLOGY", "VOLUME ID", "CAPACITY");
    for [id, capacity, topology] in &rows {
        println!("{id:<w0$}  {capacity:<w1$}  {topology}");
    }
    Ok(())
}

/// All pages. A token seen twice would loop forever, so it is an error instead.
async fn all_volumes(c: &Client) -> Result<Vec<csi::Volume>, CtlError> {
    let rpc = "ListVolumes";
    let mut volumes = Vec::new();
    let mut seen = HashSet::new();
    let mut token = String::new();
    loop {
        let request = csi::ListVolumesRequest {
            max_entries: PAGE,
            starting_token: token.clone(),
        };
        let page = match c
            .call_optional(rpc, c.controller().list_volumes(request))
            .await?
        {
            Some(page) => page,
            None => {
                return Err(CtlError::ListUnsupported {
                    endpoint: c.endpoint().clone(),
                })
            }
        };
        volumes.extend(page.entries.into_iter().filter_map(|e| e.volume));
        if page.next_token.is_empty() {
            return Ok(volumes);
        }
        if seen.len() >= MAX_PAGES {
            return Err(CtlError::ListTooLong {
                endpoint: c.endpoint().clone(),
                pages: MAX_PAGES,
            });
        }
        if !seen.insert(page.next_token.clone()) {
            return Err(CtlError::ListLoop {
                endpoint: c.endpoint().clone(),
                token: page.next_token,
            });
        }
        token = page.next_token;
    }
}
