//! A real nginx (Debian's package; `./scripts/test` installs it where
//! missing) terminating TLS in front of a node, routed the way AWX's own
//! nginx routes `/websocket` upgrades to daphne. Stopped on drop.

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

impl Nginx {
    /// Listens with TLS on `listen` (a certificate for its IP) and proxies
    /// `/websocket` to `upstream`.
    pub fn start(listen: SocketAddr, upstream: SocketAddr) -> Self {
        let dir = TempDir::new("nginx");
        let ck = rcgen::generate_simple_self_signed(vec![listen.ip().to_string()]).unwrap();
        let cert = dir.0.join("cert.pem");
        let key = dir.0.join("key.pem");
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
        let d = dir.0.display();
        // AWX's nginx.conf, reduced to the websocket route: HTTP/1.1 to
        // the upstream with the upgrade headers, no buffering, long reads.
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log warn;\nevents {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
               map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}\n\
               server {{\n    listen {listen} ssl;\n    ssl_certificate {cert};\n    ssl_certificate_key {key};\n\
                 location /websocket {{\n      proxy_pass http://{upstream};\n      proxy_http_version 1.1;\n\
                   proxy_set_header Upgrade $http_upgrade;\n      proxy_set_header Connection $connection_upgrade;\n\
                   proxy_set_header Host $host;\n      proxy_buffering off;\n      proxy_read_timeout 3600s;\n    }}\n  }}\n}}\n",
            cert = cert.display(),
            key = key.display(),
        );
        let conf_path = dir.0.join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new("nginx")
            .args(["-p", &d.to_string(), "-c"])
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
