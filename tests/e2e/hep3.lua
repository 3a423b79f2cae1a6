-- HEPv3 (Homer Encapsulation Protocol version 3) for tshark, which has no
-- HEP dissector of its own in Wireshark 4.0 (Debian 12). Written from the
-- HEP3 specification of sipcapture.org for tests/hep_export.rs:
--   tshark -X lua_script:tests/e2e/hep3.lua -d udp.port==PORT,hep3 -r FILE
-- Every chunk is checked (lengths, the sizes of the fixed-size chunks, the
-- total length); a problem is an expert error "hep3.malformed". A SIP
-- payload (type 1) goes to Wireshark's own SIP dissector; a log (type 100)
-- is shown as text in hep3.log.

local hep3 = Proto("hep3", "HEPv3 (Homer Encapsulation Protocol)")
local f = hep3.fields
f.length = ProtoField.uint16("hep3.length", "Total length")
f.vendor = ProtoField.uint16("hep3.vendor", "Chunk vendor", base.HEX)
f.chunk = ProtoField.uint16("hep3.chunk", "Chunk type")
f.family = ProtoField.uint8("hep3.ip_family", "IP family")
f.ip_proto = ProtoField.uint8("hep3.ip_proto", "IP protocol")
f.src_ip = ProtoField.ipv4("hep3.src_ip", "Source IPv4")
f.dst_ip = ProtoField.ipv4("hep3.dst_ip", "Destination IPv4")
f.src_ip6 = ProtoField.ipv6("hep3.src_ip6", "Source IPv6")
f.dst_ip6 = ProtoField.ipv6("hep3.dst_ip6", "Destination IPv6")
f.src_port = ProtoField.uint16("hep3.src_port", "Source port")
f.dst_port = ProtoField.uint16("hep3.dst_port", "Destination port")
f.ts_sec = ProtoField.uint32("hep3.ts_sec", "Timestamp, seconds")
f.ts_usec = ProtoField.uint32("hep3.ts_usec", "Timestamp, microseconds")
f.proto_type = ProtoField.uint8("hep3.proto_type", "Payload type")
f.capture_id = ProtoField.uint32("hep3.capture_id", "Capture agent id")
f.auth_key = ProtoField.string("hep3.auth_key", "Authentication key")
f.correlation_id = ProtoField.string("hep3.correlation_id", "Correlation id")
f.payload = ProtoField.bytes("hep3.payload", "Payload")
f.log = ProtoField.string("hep3.log", "Log")

local malformed = ProtoExpert.new("hep3.malformed", "Malformed HEPv3",
  expert.group.MALFORMED, expert.severity.ERROR)
hep3.experts = { malformed }

local sip = Dissector.get("sip")

-- Value sizes of the fixed-size generic chunks.
local fixed = { [1] = 1, [2] = 1, [3] = 4, [4] = 4, [5] = 16, [6] = 16,
  [7] = 2, [8] = 2, [9] = 4, [10] = 4, [11] = 1, [12] = 4 }
local fields = { [1] = f.family, [2] = f.ip_proto, [3] = f.src_ip, [4] = f.dst_ip,
  [5] = f.src_ip6, [6] = f.dst_ip6, [7] = f.src_port, [8] = f.dst_port,
  [9] = f.ts_sec, [10] = f.ts_usec, [11] = f.proto_type, [12] = f.capture_id,
  [14] = f.auth_key, [17] = f.correlation_id, [15] = f.payload }

function hep3.dissector(tvb, pinfo, tree)
  if tvb:len() < 6 or tvb(0, 4):string() ~= "HEP3" then
    return 0
  end
  pinfo.cols.protocol = "HEP3"
  local t = tree:add(hep3, tvb())
  local total = tvb(4, 2):uint()
  t:add(f.length, tvb(4, 2))
  if total ~= tvb:len() then
    t:add_proto_expert_info(malformed, "length " .. total .. " but " .. tvb:len() .. " bytes")
    return tvb:len()
  end
  local offset, payload, payload_type = 6, nil, nil
  while offset < total do
    if offset + 6 > total then
      t:add_proto_expert_info(malformed, "a truncated chunk header")
      return total
    end
    local vendor = tvb(offset, 2):uint()
    local kind = tvb(offset + 2, 2):uint()
    local len = tvb(offset + 4, 2):uint()
    if len < 6 or offset + len > total then
      t:add_proto_expert_info(malformed, "chunk " .. kind .. " of length " .. len)
      return total
    end
    t:add(f.vendor, tvb(offset, 2))
    t:add(f.chunk, tvb(offset + 2, 2))
    if vendor == 0 and fixed[kind] and fixed[kind] ~= len - 6 then
      t:add_proto_expert_info(malformed, "chunk " .. kind .. " holds " .. (len - 6) .. " bytes")
    elseif vendor == 0 and fields[kind] and len > 6 then
      local value = tvb(offset + 6, len - 6)
      t:add(fields[kind], value)
      if kind == 11 then payload_type = value:uint() end
      if kind == 15 then payload = value end
    end
    offset = offset + len
  end
  if payload == nil then
    t:add_proto_expert_info(malformed, "no payload chunk")
  elseif payload_type == 1 then
    sip:call(payload:tvb(), pinfo, tree)
  else
    t:add(f.log, payload)
  end
  return total
end

DissectorTable.get("udp.port"):add_for_decode_as(hep3)
