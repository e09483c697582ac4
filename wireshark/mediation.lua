-- Wireshark dissector for the mediation server's delivery link: the
-- Mediation-Delivery envelope module and the T1.IAS CmII (IasProtocol) and
-- CmCC (IAS-CC-APDU) PDUs it carries (asn1/*.asn in this repository).
--
-- Install (one step, see docs/wireshark.md):
--   mkdir -p ~/.local/lib/wireshark/plugins && cp wireshark/mediation.lua ~/.local/lib/wireshark/plugins/
-- or for one run:  tshark -X lua_script:wireshark/mediation.lua -r capture.pcap -V
--
-- What it dissects:
--   * sealed UDP datagrams ("MD" header, AES-256-GCM): the clear header;
--     the payload is shown as encrypted (Wireshark 4.0's Lua has no AES-GCM);
--   * unsealed DER messages over UDP (older receivers, `mediate decode` pcaps);
--   * the TLS stream's framing (DER messages back to back) over TCP, plain or
--     decrypted by Wireshark's TLS dissector, reassembled across segments.
--
-- The BER walker is bounded: definite lengths only, a depth limit, an item
-- limit, and every step moves forward, so malformed input ends in expert
-- info, never in a loop or a Lua error.

local proto = Proto("mediation", "Mediation delivery (T1.IAS)")

local MAX_DEPTH = 24        -- the deepest schema path is 9 levels
local MAX_ITEMS = 4000      -- tree items per message
local MAX_HEX = 64          -- octets shown as hex in one item

-- Preferences ---------------------------------------------------------------

proto.prefs.udp_ports = Pref.range("UDP ports", "5555", "UDP delivery (sealed or not)", 65535)
proto.prefs.tcp_ports = Pref.range("TCP ports", "6543,6544",
    "TLS delivery and retrieval streams (TLS is handed to Wireshark's TLS dissector)", 65535)
proto.prefs.max_message = Pref.uint("Largest message", 1048576,
    "Octets, header included; a longer stream message is malformed (the server's MAX_MESSAGE)")
proto.prefs.dissect_ip = Pref.bool("Dissect CC payload as IP", true,
    "Hand the IP packet of each IAS-CC-APDU to Wireshark's ip/ipv6 dissector")

-- Fields --------------------------------------------------------------------

local F = {
    msgtype = ProtoField.string("mediation.type", "Message type"),
    case_id = ProtoField.string("mediation.case_id", "Case identity"),
    iap_id = ProtoField.string("mediation.iap_id", "IAP system identity"),
    handle = ProtoField.string("mediation.warrant_handle", "Warrant handle"),
    kind = ProtoField.string("mediation.stream_kind", "Stream kind"),
    seq = ProtoField.uint64("mediation.sequence", "Sequence number"),
    time = ProtoField.string("mediation.time", "Time"),
    str = ProtoField.string("mediation.string", "String"),
    int = ProtoField.string("mediation.integer", "Integer"),
    enum = ProtoField.string("mediation.enum", "Enumerated"),
    octets = ProtoField.bytes("mediation.octets", "Octets"),
    node = ProtoField.bytes("mediation.node", "Constructed"),
    payload = ProtoField.bytes("mediation.payload", "CC payload"),
    s_magic = ProtoField.string("mediation.sealed.magic", "Magic"),
    s_version = ProtoField.uint8("mediation.sealed.version", "Version"),
    s_direction = ProtoField.uint8("mediation.sealed.direction", "Direction", base.DEC,
        { [0] = "server->agency", [1] = "agency->server", [2] = "tap->server", [3] = "server->tap" }),
    s_key_id = ProtoField.uint32("mediation.sealed.key_id", "Key id", base.HEX),
    s_session = ProtoField.uint64("mediation.sealed.session_id", "Session id", base.HEX),
    s_start = ProtoField.absolute_time("mediation.sealed.session_start", "Session start", base.UTC),
    s_counter = ProtoField.uint64("mediation.sealed.counter", "Counter"),
    s_cipher = ProtoField.bytes("mediation.sealed.ciphertext", "Ciphertext"),
    s_tag = ProtoField.bytes("mediation.sealed.tag", "GCM tag"),
}
proto.fields = {}
for _, field in pairs(F) do table.insert(proto.fields, field) end

local E = {
    malformed = ProtoExpert.new("mediation.malformed", "Malformed BER",
        expert.group.MALFORMED, expert.severity.ERROR),
    unknown = ProtoExpert.new("mediation.unknown", "Unknown field or alternative (skipped by length)",
        expert.group.UNDECODED, expert.severity.NOTE),
    sealed = ProtoExpert.new("mediation.encrypted", "Sealed datagram: payload encrypted",
        expert.group.UNDECODED, expert.severity.NOTE),
    limit = ProtoExpert.new("mediation.limit", "Dissection limit reached",
        expert.group.UNDECODED, expert.severity.WARN),
}
proto.experts = { E.malformed, E.unknown, E.sealed, E.limit }

-- The three ASN.1 modules as tables ------------------------------------------
-- kinds: seq (fields by context tag), choice (alts by context tag), seqof,
-- and the leaves str, utf8, int, enum, bool, null, time, octets, oid, ip, packet.
-- A context tag on a choice is explicit (X.680), on anything else implicit.

local function leaf(kind, extra)
    local t = { kind = kind }
    for k, v in pairs(extra or {}) do t[k] = v end
    return t
end
local function seq(name, fields) return { kind = "seq", name = name, fields = fields } end
local function choice(name, alts, collapse) return { kind = "choice", name = name, alts = alts, collapse = collapse } end
local function f(name, t) return { name = name, type = t } end
local function o(name, t) return { name = name, type = t, optional = true } end  -- OPTIONAL

local VS, UTF8, INT, BOOL, NULL = leaf("str"), leaf("utf8"), leaf("int"), leaf("bool"), leaf("null")
local TIME, OCTETS, OID = leaf("time"), leaf("octets"), leaf("oid")
local IPOCT = leaf("ip")
local function ENUM(names) return leaf("enum", { names = names }) end
local function SEQOF(elem) return { kind = "seqof", elem = elem } end

local Value = choice("Value", { [0] = f("stringVS", VS), f("stringUTF8", UTF8), f("integer", INT),
    f("octets", OCTETS), f("numeric", VS) })
local IpAddress = choice("IpAddress", { [1] = f("ipV4", IPOCT), [2] = f("ipV6", IPOCT) }, true)
local IPAddress = seq("IPAddress", { [0] = f("address", IpAddress),
    f("allocationMethod", choice(nil, { [0] = f("static", NULL), f("dynamic", NULL),
        f("unknown", NULL), f("notApplicable", NULL) })),
    o("iPv6FlowLabel", UTF8), o("prefixLen", INT) })
local AccessMethod = seq("AccessMethod", {
    [0] = o("accessType", choice(nil, { [0] = f("dialUp", NULL), f("dsl", NULL), f("lan", NULL),
        f("cable", NULL), f("wiFi", NULL), f("wiMax", NULL), f("other", UTF8) })),
    o("accessEquipmentID", UTF8), o("partOfMultipleLogin", NULL) })
local Location = seq("Location", { [0] = f("locationType", UTF8), f("location", UTF8) })
local ProtocolSignal = seq("ProtocolSignal", {
    [0] = f("protocol", choice(nil, { [0] = f("radius", NULL), f("other", UTF8) })),
    f("signal", SEQOF(Value)) })
local SignalingMsg = seq("InterceptedSignalingMessage", {
    [0] = f("messageType", ENUM({ [0] = "radius", "diameter", "xml", "asndot1", "other" })),
    f("message", UTF8) })
local ContentIdentifier = choice("ContentIdentifier", { [0] = f("correlationID", OCTETS),
    f("callID", seq(nil, { [0] = f("main", UTF8), o("leg", UTF8) })) })
local HeaderSet = seq("HeaderSet", { [0] = f("streamID", Value), f("sourceIPaddress", IPAddress),
    f("destinationIPaddress", IPAddress), o("sourcePortNumber", UTF8), o("destinationPortNumber", UTF8) })
local StreamSet = seq("StreamSet", { [0] = f("streamID", Value), f("sourceIPaddress", IPAddress),
    f("destinationIPaddress", IPAddress), f("packetCount", INT), o("sourcePortNumber", UTF8),
    o("destinationPortNumber", UTF8) })
local CCCIdentity = choice("CCCIdentity", { [0] = f("combCCC", VS),
    f("sepCCCpair", seq(nil, { [0] = f("sepXmitCCC", VS), f("sepRecvCCC", VS) })),
    f("indXmitCCC", VS), f("indRecvCCC", VS), f("indCCC", VS) })
local Delivery = seq("LEA-CmC-Delivery", { [0] = f("contentIdentifier", ContentIdentifier),
    f("deliveryIdentifier", choice(nil, { [0] = f("cccId", CCCIdentity),
        f("ccAddress", seq(nil, { [0] = f("leaIPAddress", IpAddress), f("leaPortNumber", UTF8) })) })),
    f("ccDeliveryFormat", choice(nil, { [0] = f("scteDatagram", NULL), f("atis-678-ASN1", OID),
        f("iasDatagram", NULL) })) })

local function head() return { [0] = f("caseId", VS), f("iAPSystemId", VS), f("timestamp", TIME) } end
-- The fields after the three common ones, from tag [3] on.
local function with(fields, more) for i, v in ipairs(more) do fields[2 + i] = v end return fields end

local AccessFailed = seq("Access-Failed", with(head(), { f("subscriberIdentity", Value),
    o("iPAddress", IPAddress), o("reasonForTermination", Value), o("protocolSignal", ProtocolSignal) }))
local SessionStart = seq("Packet-Data-Session-Start", with(head(), { f("subscriberIdentity", Value),
    o("accessSessionID", Value), f("packetDataSessionID", Value), f("iPAddress", IPAddress),
    o("accessSessionCharacteristics", Value), o("location", Location), o("deliveryInformation", Delivery) }))
local IasMessage = choice("IasMessage", {
    [0] = f("access-Attempt", seq("Access-Attempt", with(head(), { f("subscriberIdentity", Value),
        o("accessMethod", AccessMethod), o("networkAccessNodeIdentity", Value),
        o("protocolSignal", ProtocolSignal) }))),
    f("access-Accepted", seq("Access-Accepted", with(head(), { f("subscriberIdentity", Value),
        o("accessMethod", AccessMethod), o("networkAccessNodeIdentity", Value), o("iPAddress", IPAddress),
        f("accessSessionID", Value), o("accessSessionCharacteristics", Value), o("location", Location),
        o("protocolSignal", ProtocolSignal) }))),
    f("access-Failed", AccessFailed),
    f("access-Session-End", seq("Access-Session-End", with(head(), { f("subscriberIdentity", Value),
        o("iPAddress", IPAddress), f("accessSessionID", Value), o("reasonForTermination", Value),
        o("protocolSignal", ProtocolSignal) }))),
    f("access-Rejected", AccessFailed),
    f("access-Signaling-Message-Report", seq("Access-Signaling-Message-Report", with(head(), {
        o("accessSessionID", Value), f("signalingMsg", SEQOF(SignalingMsg)) }))),
    f("session-Start", SessionStart),
    f("session-Failed", seq("Packet-Data-Session-Failed", with(head(), { f("subscriberIdentity", Value),
        o("accessSessionID", Value), o("reasonForTermination", Value) }))),
    f("session-End", seq("Packet-Data-Session-End", with(head(), { f("subscriberIdentity", Value),
        o("accessSessionID", Value), f("packetDataSessionID", Value), f("iPAddress", IPAddress),
        o("reasonForTermination", Value) }))),
    f("session-Already-Established", SessionStart),
    f("data-Header-Report", seq("Packet-Data-Header-Report", with(head(), {
        f("contentIdentifier", ContentIdentifier), f("headerSet", HeaderSet) }))),
    f("data-Summary-Report", seq("Packet-Data-Summary-Report", with(head(), {
        f("contentIdentifier", ContentIdentifier), f("streamSet", StreamSet) }))),
})
-- Untagged components: an OBJECT IDENTIFIER, then the IasMessage CHOICE.
local IasProtocol = seq("IasProtocol", {})
IasProtocol.universal = { [6] = f("protocolIdentifier", OID) }
IasProtocol.untagged = f("iasMessage", IasMessage)

local CCApdu = seq("IAS-CC-APDU", {
    [0] = o("ccDeliveryHeader", seq("CCDeliveryHeader", {
        [0] = f("correlationInfo", seq(nil, { [0] = o("caseId", VS), o("iapId", VS),
            f("contentIdentifier", ContentIdentifier) })),
        o("timeStamp", TIME), o("packetDirection", ENUM({ [0] = "fromSubject", "toSubject" })),
        o("sequenceNumber", INT) })),
    f("payload", leaf("packet")) })

local StreamId = seq("StreamIdentifier", { [0] = f("warrantHandle", VS),
    f("kind", ENUM({ [0] = "cmII", "cmCC" })) })
local Range = seq("SequenceRange", { [0] = f("first", INT), f("last", INT) })
local Notice = seq("CompletenessNotice", {
    [0] = f("event", ENUM({ [0] = "warrantActive", "warrantInactive", "upstreamGap", "tapLost",
        "tapRestored", "storageUnavailable", "storageRestored", "clockUnsynchronised",
        "clockSynchronised" })),
    f("eventTime", TIME), o("periodStart", TIME), o("periodEnd", TIME), o("lostCount", INT),
    o("source", UTF8), o("detail", UTF8) })
local Keepalive = seq("Keepalive", { [0] = f("keepaliveId", INT), f("sentTime", TIME) })
local DeliveryMessage = choice("DeliveryMessage", {
    [0] = f("pduEnvelope", seq("PDUEnvelope", { [0] = f("stream", StreamId), f("sequenceNumber", INT),
        f("mediationTime", TIME),
        o("clockStatus", ENUM({ [0] = "synchronised", "unsynchronised", "unknown" })),
        o("redelivered", BOOL),
        f("content", choice("EnvelopeContent", { [0] = f("cmII", IasProtocol), f("cmCC", CCApdu),
            f("notice", Notice) })) })),
    f("keepalive", Keepalive),
    f("keepaliveAnswer", Keepalive),
    f("acknowledgement", seq("Acknowledgement", { [0] = f("stream", StreamId), f("nextExpected", INT) })),
    f("replayRequest", seq("ReplayRequest", { [0] = f("requestId", INT), f("stream", StreamId),
        f("ranges", SEQOF(Range)) })),
    f("replayResult", seq("ReplayResult", { [0] = f("requestId", INT), f("stream", StreamId),
        f("delivered", INT), f("unavailable", SEQOF(Range)), o("reason", UTF8), o("notYet", SEQOF(Range)),
        o("limited", ENUM({ [0] = "request", "connection" })) })),
    f("receiverReport", seq("ReceiverReport", { [0] = f("stream", StreamId), f("reportTime", TIME),
        o("highestSequence", INT), f("receivedCount", INT), f("missing", SEQOF(Range)),
        o("missingOmitted", INT) })),
    f("checkpoint", seq("ChainCheckpoint", { [0] = f("stream", StreamId), f("lastSequence", INT),
        f("chainHash", OCTETS), f("checkpointTime", TIME), f("signature", OCTETS), f("keyId", OCTETS) })),
})

-- Filterable fields for the names an analyst looks for; the rest are generic.
local NAMED = { caseId = F.case_id, iAPSystemId = F.iap_id, iapId = F.iap_id,
    warrantHandle = F.handle, kind = F.kind, sequenceNumber = F.seq, nextExpected = F.seq,
    lastSequence = F.seq, highestSequence = F.seq }
local SUMMARY = { caseId = true, warrantHandle = true, kind = true, sequenceNumber = true, event = true }

-- BER ------------------------------------------------------------------------

-- One TLV header at off (content must end by limit unless `partial`).
-- Returns a table {cls, cons, num, hdr, len} or nil and why.
local function read_header(tvb, off, limit, partial)
    if off >= limit then return nil, "missing tag" end
    local b = tvb(off, 1):uint()
    local h = { cls = bit32.rshift(b, 6), cons = bit32.band(b, 0x20) ~= 0, num = bit32.band(b, 0x1f) }
    local p = off + 1
    if h.num == 0x1f then
        h.num = 0
        repeat
            if p >= limit or p - off > 4 then return nil, "tag number truncated or too long" end
            local c = tvb(p, 1):uint()
            h.num = h.num * 128 + bit32.band(c, 0x7f)
            p = p + 1
        until bit32.band(c, 0x80) == 0
    end
    if p >= limit then return nil, "length missing (truncated)" end
    local l = tvb(p, 1):uint()
    p = p + 1
    if l == 0x80 then return nil, "indefinite length (not DER)" end
    if l > 0x80 then
        local n = l - 0x80
        if n > 4 then return nil, string.format("length of %d octets is too large", n) end
        if p + n > limit then return nil, "length truncated" end
        l = tvb(p, n):uint()
        p = p + n
    end
    h.hdr, h.len = p - off, l
    if not partial and p + l > limit then
        return nil, string.format("length %d runs past the end (%d octets left)", l, limit - p)
    end
    return h
end

local function hex(range)
    if range:len() == 0 then return "" end
    local n = math.min(range:len(), MAX_HEX)
    local s = range:range(0, n):bytes():tohex():lower()
    if n < range:len() then s = s .. string.format("... (%d octets)", range:len()) end
    return s
end

local function iso_time(s)
    local y, mo, d, h, mi, sec, rest = s:match("^(%d%d%d%d)(%d%d)(%d%d)(%d%d)(%d%d)(%d%d)(.*)$")
    if not y then return nil end
    local frac = rest:match("^[.,](%d+)Z$")
    if rest == "Z" then frac = "" elseif not frac then return nil end
    while #frac < 6 do frac = frac .. "0" end
    return string.format("%s-%s-%sT%s:%s:%s.%sZ", y, mo, d, h, mi, sec, frac)
end

local function oid_text(range)
    if range:len() == 0 or range:len() > 64 then return nil end
    local arcs, v = {}, 0
    for i = 0, range:len() - 1 do
        local c = range(i, 1):uint()
        v = v * 128 + bit32.band(c, 0x7f)
        if bit32.band(c, 0x80) == 0 then
            if #arcs == 0 then
                local first = math.min(math.floor(v / 40), 2)
                table.insert(arcs, first)
                v = v - first * 40
            end
            table.insert(arcs, string.format("%.0f", v))
            v = 0
        end
    end
    return table.concat(arcs, ".")
end

-- Text safe to show: octets outside printable ASCII (or, for UTF-8, outside
-- well-formed UTF-8 sequences) become \xNN. Returns the text and whether
-- nothing had to be escaped.
local function printable(raw, utf8)
    local out, ok, i, n = {}, true, 1, #raw
    while i <= n do
        local c = raw:byte(i)
        local len = 1
        if utf8 and c >= 0xc2 and c <= 0xf4 then
            len = (c >= 0xf0 and 4) or (c >= 0xe0 and 3) or 2
            -- The second octet's range rules out overlong forms, surrogates
            -- and code points past U+10FFFF (RFC 3629 section 4).
            local low = (c == 0xe0 and 0xa0) or (c == 0xf0 and 0x90) or 0x80
            local high = (c == 0xed and 0x9f) or (c == 0xf4 and 0x8f) or 0xbf
            for j = i + 1, i + len - 1 do
                local d = raw:byte(j)
                if not d or d < (j == i + 1 and low or 0x80) or d > (j == i + 1 and high or 0xbf) then
                    len = 1
                    break
                end
            end
        end
        if len > 1 then
            out[#out + 1] = raw:sub(i, i + len - 1)
        elseif c >= 0x20 and c < 0x7f then
            out[#out + 1] = string.char(c)
        else
            out[#out + 1] = string.format("\\x%02x", c)
            ok = false
        end
        i = i + len
    end
    return table.concat(out), ok
end

-- An INTEGER's content: text, and an UInt64 when it fits and is not negative.
local function integer(range)
    local n = range:len()
    if n == 0 then return nil end
    local first = range(0, 1):uint()
    if n == 9 and first == 0 then
        local u = range(1, 8):uint64()
        return tostring(u), u
    end
    if n > 8 then return nil end
    if first >= 0x80 then return tostring(range:int64()), nil end
    local u = range:uint64()
    return tostring(u), u
end

-- The walker ---------------------------------------------------------------

local dissect_field

-- (The range argument is where the caller looked; the item marks the place.)
local function bad(ctx, item, _range, why)
    item:add_proto_expert_info(E.malformed, why)
    ctx.errors = ctx.errors + 1
end

local function budget(ctx, tree, range)
    ctx.items = ctx.items + 1
    if ctx.items == MAX_ITEMS then
        tree:add_tvb_expert_info(E.limit, range, "more than " .. MAX_ITEMS .. " items: the rest is not shown")
    end
    return ctx.items < MAX_ITEMS
end

-- A leaf value: its text, and the filterable field and value to add.
local function leaf_value(t, name, range)
    local k = t.kind
    if k == "str" or k == "utf8" then
        local s, ok = printable(range:len() > 0 and range:raw() or "", k == "utf8")
        return s, NAMED[name] or F.str, s, not ok
    elseif k == "int" then
        local s, u = integer(range)
        if not s then return nil end
        if NAMED[name] and u then return s, NAMED[name], u end
        return s, F.int, s
    elseif k == "enum" then
        local s = integer(range)
        if not s then return nil end
        local text = t.names[tonumber(s)] or ("unknown(" .. s .. ")")
        return text, NAMED[name] or F.enum, text
    elseif k == "bool" then
        if range:len() ~= 1 then return nil end
        local s = range:uint() ~= 0 and "true" or "false"
        return s, F.str, s
    elseif k == "null" then
        if range:len() ~= 0 then return nil end
        return "present", F.str, "present"
    elseif k == "time" then
        local raw = range:len() > 0 and range:string() or ""
        local s = iso_time(raw)
        if not s then return nil end
        return s, F.time, s
    elseif k == "oid" then
        local s = oid_text(range)
        return s, F.str, s
    elseif k == "ip" then
        if range:len() == 4 then return tostring(range:ipv4()), F.octets end
        if range:len() == 16 then return tostring(range:ipv6()), F.octets end
        return nil
    end
    return hex(range), F.octets   -- octets
end

local KIND_NAMES = { str = "VisibleString", utf8 = "UTF8String", int = "INTEGER", enum = "ENUMERATED",
    bool = "BOOLEAN", null = "NULL", time = "GeneralizedTime", oid = "OBJECT IDENTIFIER",
    ip = "IP address (4 or 16 octets)" }

local function add_leaf(ctx, tree, t, name, tlv, crange)
    if t.kind == "packet" then
        local item = tree:add(F.payload, tlv)
        item:set_text(string.format("%s: %d octets", name, crange:len()))
        ctx.packet = crange
        ctx.packet_tree = item
        return
    end
    local text, field, value, invalid = leaf_value(t, name, crange)
    -- An octets item takes its value from the range itself.
    local item = (text and field ~= F.octets) and tree:add(field, tlv, value) or tree:add(F.octets, tlv)
    item:set_text(name .. ": " .. (text or hex(crange)))
    if invalid or not text then
        bad(ctx, item, tlv, string.format("%s: not a valid %s", name, KIND_NAMES[t.kind] or t.kind))
        if not text then return end
    end
    if SUMMARY[name] and ctx.depth_summary[name] == nil then ctx.depth_summary[name] = text end
    return text
end

-- The component of SEQUENCE t that header h starts, and whether it is the
-- untagged CHOICE (IasProtocol's iasMessage), or nil.
local function member_of(t, h)
    if h.cls == 2 and t.fields[h.num] then return t.fields[h.num], false end
    if h.cls == 0 and t.universal and t.universal[h.num] then return t.universal[h.num], false end
    if h.cls == 2 and t.untagged and t.untagged.type.alts[h.num] then return t.untagged, true end
    return nil
end

-- Every component not OPTIONAL must be there, once (DER: in tag order, which
-- the schema's tags follow, so a repeat is also out of order).
local function check_members(ctx, tree, t, seen)
    local all = {}
    for _, member in pairs(t.fields) do all[#all + 1] = member end
    for _, member in pairs(t.universal or {}) do all[#all + 1] = member end
    all[#all + 1] = t.untagged
    for _, member in ipairs(all) do
        local count = seen[member] or 0
        if count == 0 and not member.optional then
            bad(ctx, tree, nil, string.format("%s: missing (not OPTIONAL in %s)", member.name, t.name or "its SEQUENCE"))
        elseif count > 1 then
            bad(ctx, tree, nil, string.format("%s: present %d times", member.name, count))
        end
    end
end

-- A SEQUENCE's or SEQUENCE OF's content [off, limit).
local function dissect_children(tvb, ctx, tree, t, off, limit, depth)
    local seen = {}
    while off < limit do
        local h, why = read_header(tvb, off, limit)
        if not h then
            bad(ctx, tree, nil, why)
            tree:add(F.octets, tvb(off, limit - off)):set_text("undecodable: " .. why)
            return
        end
        local tlv = tvb(off, h.hdr + h.len)
        if not budget(ctx, tree, tlv) then return end
        if t.kind == "seqof" then
            local bare = t.elem.kind == "choice"
            dissect_field(tvb, ctx, tree, f(bare and "element" or t.elem.name, t.elem), off, h, depth, bare)
        else
            local member, bare = member_of(t, h)
            if member then
                seen[member] = (seen[member] or 0) + 1
                dissect_field(tvb, ctx, tree, member, off, h, depth, bare)
            else
                local item = tree:add(F.octets, tlv)
                item:set_text(string.format("unknown field [%d] (%d octets)", h.num, h.len))
                item:add_proto_expert_info(E.unknown)
            end
        end
        off = off + h.hdr + h.len
    end
    if t.kind == "seq" then check_members(ctx, tree, t, seen) end
end

-- One CHOICE, given the TLV of its alternative (header h at off).
local function dissect_alt(tvb, ctx, tree, fld, off, h, depth)
    local alt = h.cls == 2 and fld.type.alts[h.num]
    local tlv = tvb(off, h.hdr + h.len)
    if not alt then
        local item = tree:add(F.octets, tlv)
        item:set_text(string.format("%s: unknown alternative [%d] (%d octets)", fld.name, h.num, h.len))
        item:add_proto_expert_info(E.unknown)
        return
    end
    local k = alt.type.kind
    if k == "seq" or k == "choice" or k == "seqof" then
        -- The message types an analyst filters on (mediation.type): the
        -- delivery message, the CmII message, the other envelope contents.
        local typename = (fld.name == "iasMessage" or fld.name == "DeliveryMessage") and alt.name
            or (fld.name == "content" and alt.name ~= "cmII" and alt.type.name) or nil
        if typename then
            ctx.types[#ctx.types + 1] = typename
            tree:add(F.msgtype, tlv, typename):set_generated()
        end
        return dissect_field(tvb, ctx, tree, f(fld.name .. ": " .. alt.name, alt.type), off, h, depth)
    end
    if k == "null" and h.len == 0 then
        tree:add(F.str, tlv, alt.name):set_text(fld.name .. ": " .. alt.name)
        return
    end
    local crange = h.len > 0 and tvb(off + h.hdr, h.len) or tvb(off, 0)
    local label = fld.type.collapse and fld.name or (fld.name .. ": " .. alt.name)
    add_leaf(ctx, tree, alt.type, label, tlv, crange)
end

-- One component with header h at off. `bare`: the TLV is the CHOICE's
-- alternative itself (untagged choice); otherwise a choice is explicit.
dissect_field = function(tvb, ctx, tree, fld, off, h, depth, bare)
    local t = fld.type
    local tlv = tvb(off, h.hdr + h.len)
    if depth > MAX_DEPTH then
        tree:add_tvb_expert_info(E.limit, tlv, "nesting deeper than " .. MAX_DEPTH .. ": not shown")
        return
    end
    if t.kind == "choice" then
        if bare then return dissect_alt(tvb, ctx, tree, fld, off, h, depth + 1) end
        if not h.cons or h.len == 0 then
            local item = tree:add(F.octets, tlv):set_text(fld.name .. ": empty or primitive")
            return bad(ctx, item, tlv, fld.name .. ": an explicit CHOICE must hold one TLV")
        end
        local inner, why = read_header(tvb, off + h.hdr, off + h.hdr + h.len)
        if not inner then
            local item = tree:add(F.octets, tlv):set_text(fld.name .. ": undecodable")
            return bad(ctx, item, tlv, fld.name .. ": " .. why)
        end
        if inner.hdr + inner.len ~= h.len then
            bad(ctx, tree, tlv, fld.name .. ": trailing octets after the alternative")
        end
        return dissect_alt(tvb, ctx, tree, fld, off + h.hdr, inner, depth + 1)
    end
    if t.kind == "seq" or t.kind == "seqof" then
        if not h.cons then
            local item = tree:add(F.octets, tlv):set_text(fld.name .. ": primitive, expected constructed")
            return bad(ctx, item, tlv, fld.name .. ": expected a constructed encoding")
        end
        local item = tree:add(F.node, tlv)
        item:set_text(fld.name .. (t.name and t.name ~= fld.name and (" (" .. t.name .. ")") or ""))
        return dissect_children(tvb, ctx, item, t, off + h.hdr, off + h.hdr + h.len, depth + 1)
    end
    if h.cons then
        local item = tree:add(F.octets, tlv):set_text(fld.name .. ": constructed, expected primitive")
        return bad(ctx, item, tlv, fld.name .. ": expected a primitive encoding")
    end
    local crange = h.len > 0 and tvb(off + h.hdr, h.len) or tvb(off, 0)
    add_leaf(ctx, tree, t, fld.name, tlv, crange)
end

-- Messages -------------------------------------------------------------------

-- Which top-level type a TLV is (as mediation.pdu.codec.kind_of).
local function top_type(tvb, off, h)
    if h.cls == 0 and h.cons and h.num == 16 and h.len > 0 then
        local inner = tvb(off + h.hdr, 1):uint()
        if inner == 0x06 then return f("IasProtocol", IasProtocol) end
        if inner == 0xa0 or inner == 0x81 then return f("IAS-CC-APDU", CCApdu) end
        return nil
    end
    if h.cls == 2 and h.cons then return f("DeliveryMessage", DeliveryMessage) end
    return nil
end

local function show_packet(ctx, tvb, pinfo, tree)
    if not ctx.packet or not proto.prefs.dissect_ip or ctx.packet:len() == 0 then return end
    local version = bit32.rshift(ctx.packet(0, 1):uint(), 4)
    local name = (version == 4 and "ip") or (version == 6 and "ipv6") or nil
    if not name then
        ctx.packet_tree:append_text(" (not an IP packet)")
        return
    end
    ctx.packet_tree:append_text(string.format(" (IPv%d packet)", version))
    pcall(function() Dissector.get(name):call(ctx.packet:tvb(), pinfo, ctx.packet_tree) end)
end

local function summary(ctx)
    local s = table.concat(ctx.types, " ")
    local d = ctx.depth_summary
    if d.warrantHandle then s = s .. " " .. d.warrantHandle .. "/" .. (d.kind or "?") end
    if d.sequenceNumber then s = s .. " #" .. d.sequenceNumber end
    if d.event then s = s .. " " .. d.event end
    if d.caseId then s = s .. " case " .. d.caseId end
    if ctx.errors > 0 then s = s .. " [malformed]" end
    return s
end

-- One message: the TLV at off (whole, within limit). Returns its summary.
local function dissect_message(tvb, pinfo, tree, off, h)
    local ctx = { items = 0, errors = 0, types = {}, depth_summary = {} }
    local tlv = tvb(off, h.hdr + h.len)
    local item = tree:add(proto, tlv)
    local top = top_type(tvb, off, h)
    if not top then
        item:set_text("Mediation delivery: not a known PDU")
        bad(ctx, item, tlv, string.format("tag class %d number %d does not start a known PDU", h.cls, h.num))
        return "unknown PDU [malformed]"
    end
    if top.name ~= "DeliveryMessage" then
        ctx.types[1] = top.name
        item:add(F.msgtype, tlv, top.name):set_generated()
    end
    local ok, err = pcall(dissect_field, tvb, ctx, item, top, off, h, 0, top.name == "DeliveryMessage")
    if not ok then bad(ctx, item, tlv, "dissector error: " .. tostring(err)) end
    local text = summary(ctx)
    item:append_text(": " .. text)
    show_packet(ctx, tvb, pinfo, tree)
    return text
end

-- TCP fences the columns between the PDUs of one segment, and a later call
-- then appends: so the separator goes first when we wrote before.
local function set_columns(pinfo, texts)
    local again = tostring(pinfo.cols.protocol) == "MEDIATION"
    pinfo.cols.protocol:set("MEDIATION")
    pinfo.cols.info:set((again and "; " or "") .. table.concat(texts, "; "))
end

-- Messages back to back filling [0, len): one datagram or raw PDUs.
local function dissect_datagram(tvb, pinfo, tree)
    local off, n, texts = 0, tvb:len(), {}
    while off < n do
        local h, why = read_header(tvb, off, n)
        if not h then
            local item = tree:add(proto, tvb(off, n - off))
            item:set_text("Mediation delivery: undecodable: " .. why)
            item:add_proto_expert_info(E.malformed, why)
            texts[#texts + 1] = "malformed: " .. why
            break
        end
        texts[#texts + 1] = dissect_message(tvb, pinfo, tree, off, h)
        off = off + h.hdr + h.len
    end
    set_columns(pinfo, texts)
    return n
end

local function is_sealed(tvb)
    return tvb:len() >= 48 and tvb(0, 2):string() == "MD" and tvb(2, 1):uint() == 1
        and tvb(3, 1):uint() <= 3
end

local function dissect_sealed(tvb, pinfo, tree)
    local item = tree:add(proto, tvb(), "Mediation sealed datagram (AES-256-GCM)")
    item:add(F.s_magic, tvb(0, 2))
    item:add(F.s_version, tvb(2, 1))
    item:add(F.s_direction, tvb(3, 1))
    item:add(F.s_key_id, tvb(4, 4))
    item:add(F.s_session, tvb(8, 8))
    local us = tvb(16, 8):uint64()
    local secs = (us / 1000000):tonumber()
    local ns = (us % 1000000):tonumber() * 1000
    item:add(F.s_start, tvb(16, 8), NSTime.new(secs, ns))
    item:add(F.s_counter, tvb(24, 8))
    local n = tvb:len() - 48
    if n > 0 then item:add(F.s_cipher, tvb(32, n)) end
    item:add(F.s_tag, tvb(32 + n, 16))
    item:add_proto_expert_info(E.sealed,
        "payload encrypted (AES-256-GCM): decrypt with the agency's key (mediate receive); not done here")
    pinfo.cols.protocol:set("MEDIATION")
    pinfo.cols.info:set(string.format("sealed %s key %08x counter %s, %d octets encrypted",
        tvb(3, 1):uint() == 0 and "server->agency" or (tvb(3, 1):uint() == 1 and "agency->server" or "tap"),
        tvb(4, 4):uint(), tostring(tvb(24, 8):uint64()), n))
    return tvb:len()
end

local function dissect_udp(tvb, pinfo, tree)
    if is_sealed(tvb) then return dissect_sealed(tvb, pinfo, tree) end
    return dissect_datagram(tvb, pinfo, tree)
end

-- Stream: messages back to back, reassembled across segments.
local function dissect_stream(tvb, pinfo, tree)
    local n = tvb:len()
    if n >= 3 and tvb(0, 1):uint() >= 0x14 and tvb(0, 1):uint() <= 0x17 and tvb(1, 1):uint() == 3 then
        local tls = Dissector.get("tls")
        if tls then return tls:call(tvb, pinfo, tree) end
    end
    local off, texts = 0, {}
    while off < n do
        local h, why = read_header(tvb, off, n, true)
        if not h and (why == "length missing (truncated)" or why == "length truncated"
                or why == "tag number truncated or too long" and n - off < 6) then
            pinfo.desegment_offset = off
            pinfo.desegment_len = DESEGMENT_ONE_MORE_SEGMENT
            break
        end
        local total = h and h.hdr + h.len
        if h and total > proto.prefs.max_message then
            h, why = nil, string.format("message of %d octets exceeds the limit of %d", total,
                proto.prefs.max_message)
        end
        if not h then
            local item = tree:add(proto, tvb(off, n - off))
            item:set_text("Mediation delivery: stream undecodable: " .. why)
            item:add_proto_expert_info(E.malformed, why)
            texts[#texts + 1] = "malformed: " .. why
            break
        end
        if off + total > n then
            pinfo.desegment_offset = off
            pinfo.desegment_len = off + total - n
            break
        end
        texts[#texts + 1] = dissect_message(tvb, pinfo, tree, off, h)
        off = off + total
    end
    if #texts > 0 then set_columns(pinfo, texts) end
    return n
end

-- Heuristics -------------------------------------------------------------------

-- A whole datagram that is one plausible message (or a sealed datagram).
local function plausible(tvb)
    local n = tvb:len()
    if n < 4 then return false end
    local h = read_header(tvb, 0, n)
    if not h or h.hdr + h.len ~= n or h.len < 2 then return false end
    local inner = tvb(h.hdr, 1):uint()
    if h.cls == 0 and h.num == 16 and h.cons then return inner == 0x06 or inner == 0xa0 or inner == 0x81 end
    return h.cls == 2 and h.cons and h.num <= 7 and bit32.band(inner, 0xc0) == 0x80
end

local function heur_udp(tvb, pinfo, tree)
    if not is_sealed(tvb) and not plausible(tvb) then return false end
    dissect_udp(tvb, pinfo, tree)
    return true
end

local function heur_tls(tvb, pinfo, tree)
    local h = tvb:len() >= 4 and read_header(tvb, 0, tvb:len(), true)
    if not h or h.cls ~= 2 or not h.cons or h.num > 7 or h.hdr >= tvb:len() then return false end
    if bit32.band(tvb(h.hdr, 1):uint(), 0xc0) ~= 0x80 then return false end
    dissect_stream(tvb, pinfo, tree)
    return true
end

-- Registration ----------------------------------------------------------------

proto.dissector = dissect_udp

local stream_proto = Proto("mediation_stream", "Mediation delivery stream")
stream_proto.dissector = dissect_stream

local registered = { udp = "", tcp = "" }
local function register_ports()
    local udp, tcp, tls = DissectorTable.get("udp.port"), DissectorTable.get("tcp.port"),
        DissectorTable.get("tls.port")
    if registered.udp ~= "" then udp:remove(registered.udp, proto) end
    if registered.tcp ~= "" then
        tcp:remove(registered.tcp, stream_proto)
        if tls then tls:remove(registered.tcp, stream_proto) end
    end
    registered.udp, registered.tcp = tostring(proto.prefs.udp_ports), tostring(proto.prefs.tcp_ports)
    if registered.udp ~= "" then udp:add(registered.udp, proto) end
    if registered.tcp ~= "" then
        tcp:add(registered.tcp, stream_proto)
        if tls then tls:add(registered.tcp, stream_proto) end
    end
end

DissectorTable.get("udp.port"):add_for_decode_as(proto)
DissectorTable.get("tcp.port"):add_for_decode_as(stream_proto)
proto:register_heuristic("udp", heur_udp)
pcall(function() stream_proto:register_heuristic("tls", heur_tls) end)
register_ports()
proto.prefs_changed = register_ports
