"""Writes the seed corpora under fuzz/corpus/ (run from anywhere: python3 fuzz/seeds.py).
Each seed is a well-formed input of its target, so the fuzzer starts from
the shapes wsrelay really receives."""
import os, json, struct, hmac, hashlib, base64
root=os.path.join(os.path.dirname(os.path.abspath(__file__)), 'corpus')
def put(t, name, data):
    d=os.path.join(root,t); os.makedirs(d, exist_ok=True)
    if isinstance(data,str): data=data.encode()
    open(os.path.join(d,name),'wb').write(data)
KEY=b'\x37\xfa\x21\x3d'
def mask(payload):
    return bytes(b ^ KEY[i%4] for i,b in enumerate(payload))
def cframe(op, payload, fin=True):
    h=bytes([(0x80 if fin else 0)|op]); n=len(payload)
    if n<126: h+=bytes([0x80|n])
    elif n<65536: h+=bytes([0x80|126])+struct.pack('>H',n)
    else: h+=bytes([0x80|127])+struct.pack('>Q',n)
    return h+KEY+mask(payload)
def sframe(op, payload):
    n=len(payload); h=bytes([0x80|op])
    if n<126: h+=bytes([n])
    elif n<65536: h+=bytes([126])+struct.pack('>H',n)
    else: h+=bytes([127])+struct.pack('>Q',n)
    return h+payload
put('frame_decoder','text',cframe(1,b'{"groups": {"jobs": ["status_changed"]}}'))
put('frame_decoder','server_text',sframe(1,b'{"accept": true, "user": 1}'))
put('frame_decoder','fragments',cframe(1,b'{"a":',False)+cframe(9,b'ping')+cframe(0,b'1}'))
put('frame_decoder','close',cframe(8,struct.pack('>H',1000)+b'bye'))
put('frame_decoder','len16',cframe(1,b'x'*300))
put('frame_decoder','ping_pong',cframe(9,b'')+cframe(10,b'p'))
put('frame_decoder','binary',cframe(2,b'\x00\x01'))
put('http_head','upgrade',"GET /websocket/?token=abc HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nCookie: sessionid=s; csrftoken=c\r\n\r\n")
put('http_head','emit',"POST /api/v1/emit HTTP/1.1\r\nAuthorization: Bearer k\r\nContent-Length: 5\r\n\r\n")
put('http_head','chunked',"POST /api/v1/emit HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5, 5\r\n\r\n")
put('http_head','healthz',"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")
put('client_message','subscribe','{"groups": {"jobs": ["status_changed"], "job_events": [42, 43]}, "xrftoken": "tok"}')
put('client_message','empty','{"groups": {}}')
put('client_message','bad','{"groups": {"job_events": 42}}')
put('client_message','control','{"groups": {"control": ["limit_reached_1"], "broadcast": ["group_send"]}, "xrftoken": "tok"}')
put('client_message','deep','['*40+']'*40)
put('emit_body','one','{"group": "jobs-status_changed", "payload": {"status": "running"}}')
put('emit_body','many','[{"group": "a", "payload": 1}, {"group": "b", "payload": "x"}]')
def s16(x):
    x=x.encode(); return struct.pack('>H',len(x))+x
def events(first, evs):
    b=bytes([0x02])+struct.pack('>Q',first)+struct.pack('>I',len(evs))
    for g,p in evs: b+=s16(g)+struct.pack('>I',len(p))+p
    return b
put('peer_wire','hello',bytes([0x01,1])+s16('node-a')+struct.pack('>Q',7))
put('peer_wire','events',events(1,[('job_events-1',b'{"counter": 1}'),('jobs-x',b'{}')]))
put('peer_wire','interest',bytes([0x82])+struct.pack('>Q',5)+bytes([1])+struct.pack('>I',2)+s16('a')+s16('b')+struct.pack('>I',0))
put('peer_wire','welcome',bytes([0x81])+s16('n')+struct.pack('>Q',9)+bytes([1])+struct.pack('>Q',100))
put('peer_wire','ack',bytes([0x83])+struct.pack('>Q',3))
def s8(x): x=x.encode(); return bytes([len(x)])+x
put('peer_wire','resume_point',b'wsrp'+bytes([1])+struct.pack('>QQ',1700000000000,42)+struct.pack('>H',2)+s8('a')+s8('b.x')
    +struct.pack('>I',1)+s16('job_events-1')+struct.pack('>H',2)+struct.pack('>HQQ',0,7,500)+struct.pack('>HQQ',1,9,3)
    +struct.pack('>H',1)+struct.pack('>HQQ',0,5,1))
put('peer_wire','interest_ack',bytes([0x03])+struct.pack('>Q',3))
put('awx_json','y2020','{"group": "jobs-status_changed", "message": "{\\"status\\": \\"running\\"}"}')
put('awx_json','y2022','{"group": "job_events-1", "message": {"type": "internal.message", "text": "{\\"counter\\": 1}"}}')
put('awx_json','consumer','{"type": "consumer.subscribe", "groups": ["jobs-status_changed"], "origin_channel": "c"}')
put('awx_json','heartbeat','{"hostname": "awx-1", "ip": "10.0.0.1", "action": "online"}')
def mp_str(s):
    b=s.encode()
    return bytes([0xa0|len(b)])+b if len(b)<32 else bytes([0xd9,len(b)])+b
msg=bytes([0x83])+mp_str('type')+mp_str('internal.message')+mp_str('text')+mp_str('{"a": 1}')+mp_str('__asgi_channel__')+bytes([0x91])+mp_str('specific.wsrelay_n!jobs-x')
put('channels_redis','member',b'0123456789ab'+msg)
put('channels_redis','relay',b'0123456789ab'+bytes([0x83])+mp_str('type')+mp_str('internal.message')+mp_str('text')+mp_str('{}')+mp_str('needs_relay')+bytes([0xc3]))
def awx_header(secret, nonce):
    m=json.dumps({"secret": secret, "nonce": str(nonce)})
    return "HMAC-SHA256 %d:%s" % (nonce, hmac.new(secret.encode(), m.encode(), 'sha256').hexdigest())
put('secret_header','awx',awx_header('s3cret',1700000000))
put('secret_header','awx_stale',awx_header('s3cret',1699999000))
put('secret_header','native','v1 node-a 1700000000 '+'07'*16+' '+'00'*32)
def b64(x): return base64.urlsafe_b64encode(x).rstrip(b'=').decode()
h=b64(b'{"alg":"HS256","typ":"JWT"}'); c=b64(b'{"sub":"42","exp":1700000600,"groups":["job_events-*"]}')
sig=b64(hmac.new(b's3cret-s3cret-s3cret',(h+'.'+c).encode(),'sha256').digest())
put('jwt','valid',h+'.'+c+'.'+sig)
put('jwt','none',b64(b'{"alg":"none"}')+'.'+c+'.')
