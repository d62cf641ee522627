//! A real nginx (Debian's package; `./scripts/test` installs it where
//! missing) in front of a node, configured with the deployment files
//! themselves (`deploy/nginx/`): the route AWX's own nginx gives daphne,
//! with the upstream pointed at the node under test. Stopped on drop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::awx_api::TempDir;

pub struct Nginx {
    child: Child,
    /// The self-signed certificate it serves (PEM), to trust in a test.
    pub ca_file: PathBuf,
    _dir: TempDir,
}

/// `deploy/nginx/<name>`, as shipped.
pub fn deploy_file(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/nginx")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A complete nginx.conf around the deployment files: `listen` (with TLS
/// or not) proxying `/websocket` to `upstream`. Returns the directory and
/// the config's path.
pub fn config(listen: SocketAddr, upstream: SocketAddr, tls: bool) -> (TempDir, PathBuf, PathBuf) {
    let dir = TempDir::new("nginx");
    let ck = rcgen::generate_simple_self_signed(vec![listen.ip().to_string()]).unwrap();
    let cert = dir.0.join("cert.pem");
    let key = dir.0.join("key.pem");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let http = deploy_file("wsrelay.conf");
    assert!(
        http.contains("server 127.0.0.1:8051;"),
        "the upstream line moved"
    );
    let http = http.replace("server 127.0.0.1:8051;", &format!("server {upstream};"));
    std::fs::write(dir.0.join("wsrelay.conf"), http).unwrap();
    std::fs::write(
        dir.0.join("wsrelay-locations.conf"),
        deploy_file("wsrelay-locations.conf"),
    )
    .unwrap();
    let d = dir.0.display();
    let tls_lines = if tls {
        format!(
            "ssl_certificate {};\n    ssl_certificate_key {};\n",
            cert.display(),
            key.display()
        )
    } else {
        String::new()
    };
    let conf = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
         error_log {d}/error.log warn;\nevents {{ worker_connections 1024; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
           fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
           include {d}/wsrelay.conf;\n\
           server {{\n    listen {listen}{ssl};\n    {tls_lines}    include {d}/wsrelay-locations.conf;\n  }}\n}}\n",
        ssl = if tls { " ssl" } else { "" },
    );
    let conf_path = dir.0.join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    (dir, conf_path, cert)
}

impl Nginx {
    /// Listens with TLS on `listen` (a certificate for its IP) and proxies
    /// `/websocket` to `upstream`.
    pub fn start(listen: SocketAddr, upstream: SocketAddr) -> Self {
        Self::run(listen, upstream, true)
    }

    /// The same without TLS.
    pub fn plain(listen: SocketAddr, upstream: SocketAddr) -> Self {
        Self::run(listen, upstream, false)
    }

    fn run(listen: SocketAddr, upstream: SocketAddr, tls: bool) -> Self {
        let (dir, conf_path, cert) = config(listen, upstream, tls);
        let child = Command::new("nginx")
            .args(["-p", &dir.0.display().to_string(), "-c"])
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("nginx runs (./scripts/test installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(listen).is_err() {
            assert!(
                Instant::now() < deadline,
                "nginx did not listen: {}",
                std::fs::read_to_string(dir.0.join("error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Nginx {
            child,
            ca_file: cert,
            _dir: dir,
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
