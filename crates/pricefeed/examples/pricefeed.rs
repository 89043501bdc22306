//! Stand-alone driver for manual and process-level testing before the `understudy` binary
//! wires the subcommands in:
//! `pricefeed exchange-sim ADDR SYMBOLS RATE | price-server UPSTREAM LISTEN | price-client SERVERS SYMBOLS [--json]`.

use std::net::SocketAddr;

fn addr(s: Option<&String>) -> Result<SocketAddr, String> {
    s.ok_or("missing address")?
        .parse()
        .map_err(|e| format!("{e}"))
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize| -> Result<u32, String> {
        args.get(i)
            .ok_or("missing number")?
            .parse()
            .map_err(|e| format!("{e}"))
    };
    let res = match args.first().map(String::as_str) {
        Some("exchange-sim") => {
            understudy_pricefeed::run_exchange_sim(addr(args.get(1))?, num(2)?, num(3)?).await
        }
        Some("price-server") => {
            understudy_pricefeed::run_price_server(addr(args.get(1))?, addr(args.get(2))?).await
        }
        Some("price-client") => {
            let servers =
                understudy_pricefeed::parse_servers(args.get(1).ok_or("missing servers")?)
                    .map_err(|e| e.to_string())?;
            let symbols =
                understudy_pricefeed::parse_symbols(args.get(2).ok_or("missing symbols")?);
            understudy_pricefeed::run_price_client(
                servers,
                symbols,
                args.iter().any(|a| a == "--json"),
            )
            .await
        }
        _ => return Err("usage: pricefeed exchange-sim|price-server|price-client ...".into()),
    };
    res.map_err(|e| e.to_string())
}
