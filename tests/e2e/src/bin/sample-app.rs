//! The demo's sample app: `sample-app [ADDR] [NAME]` (default 127.0.0.1:8081, "Sample app").

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:8081".to_string());
    let name = args.next().unwrap_or_else(|| "Sample app".to_string());
    let app = portcullis_e2e::sample_app::SampleApp::start(&addr, &name)?;
    println!("sample app \"{name}\" listening on http://{}", app.addr());
    loop {
        std::thread::park();
    }
}
