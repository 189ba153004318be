# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""One ZStack ImageInventory, JSON text -> protobuf wire bytes, without a Python object per field.

The compiled half of :mod:`zstack_gateway.wire`. :func:`image` reads the JSON text of one image (a
slice of the body, as msgspec found it) and returns the serialized ``zstack.v1.ImageInventory``,
byte for byte what ``translate.image_from_json(json.loads(text), tz).SerializeToString()`` gives,
or None for anything it does not handle itself: a value of the wrong type, a string escape in a key
or a date, a number that is not a plain integer of at most 18 digits, a date it cannot read, a day
whose UTC offset is not one constant (see :class:`Days`), malformed text. The caller then runs the
reference translation, which raises the errors and writes the log lines.

Nothing here raises for the content of the text: every read is bounds-checked, nesting is skipped
with a counter (no recursion), and any doubt is a None.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.dict cimport PyDict_GetItem
from cpython.object cimport PyObject
from libc.stdint cimport int64_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memchr, memcmp, memcpy

# Field kinds, as translate.py numbers them.
cdef enum:
    K_STR = 0
    K_INT = 1
    K_BOOL = 2
    K_DATE = 3
    K_REFS = 4

# What a slot holds.
cdef enum:
    S_UNSET = 0
    S_SPAN = 1      # string bytes in the input
    S_SCRATCH = 2   # string bytes (unescaped) in the scratch buffer
    S_INT = 3
    S_BOOL = 4
    S_STAMP = 5

cdef enum:
    MAX_NUMBER = 31  # highest field number a table may hold
    MAX_FIELDS = 32

cdef int64_t TS_MIN_SECONDS = -62135596800
cdef int64_t TS_MAX_SECONDS = 253402300799
# Dates are read here only for years whose days are all inside Timestamp's range and Java's zone
# tables (translate.java_offset reads earlier times with the raw offset).
cdef int MIN_YEAR = 1902
cdef int MAX_YEAR = 9998


cdef struct Field:
    const char* key
    Py_ssize_t key_len
    int number
    int kind


cdef struct Table:
    Field fields[MAX_FIELDS]
    int count
    int top  # highest field number


cdef struct Slot:
    int state
    Py_ssize_t start
    Py_ssize_t length
    int64_t value   # int, bool, or a timestamp's seconds
    int64_t nanos


cdef struct Out:
    unsigned char* data
    Py_ssize_t length
    Py_ssize_t capacity


cdef Table IMAGE_TABLE
cdef Table REF_TABLE
cdef int REFS_NUMBER = 0
cdef list _keys = []  # keeps the tables' key bytes alive
cdef bint _configured = False


def configure(list image_fields, list ref_fields):
    """Set the field tables: lists of (JSON key as bytes, field number, kind). The image table has
    exactly one K_REFS field (the refs, whose messages follow ``ref_fields``)."""
    global REFS_NUMBER, _configured
    _configured = False
    REFS_NUMBER = 0
    _fill(&IMAGE_TABLE, image_fields, True)
    _fill(&REF_TABLE, ref_fields, False)
    if REFS_NUMBER == 0:
        raise ValueError("no repeated reference field")
    _configured = True


cdef _fill(Table* table, list fields, bint refs_allowed):
    global REFS_NUMBER
    if len(fields) > MAX_FIELDS:
        raise ValueError("too many fields")
    table.count = 0
    table.top = 0
    for key, number, kind in fields:
        if not isinstance(key, bytes) or not 1 <= number <= MAX_NUMBER or not K_STR <= kind <= K_REFS:
            raise ValueError(f"unsupported field {key!r} {number} {kind}")
        if kind == K_REFS:
            if not refs_allowed or REFS_NUMBER:
                raise ValueError("unsupported repeated field")
            REFS_NUMBER = number
        _keys.append(key)
        table.fields[table.count].key = <const char*>key
        table.fields[table.count].key_len = len(key)
        table.fields[table.count].number = number
        table.fields[table.count].kind = kind
        table.count += 1
        if number > table.top:
            table.top = number


cdef class Days:
    """The UTC offset of each calendar day in one zone, as ``compute(year, month, day)`` says: an int
    of seconds, or None for a day whose offset is not one constant (then its dates fall back).
    Remembers at most ``limit`` days, cleared when full."""

    cdef dict cache
    cdef object compute
    cdef Py_ssize_t limit

    def __init__(self, compute, Py_ssize_t limit=131072):
        self.cache = {}
        self.compute = compute
        self.limit = limit

    cdef int offset(self, int year, int month, int day, int64_t* out) except -2:
        cdef object key = year * 10000 + month * 100 + day
        cdef PyObject* found = PyDict_GetItem(self.cache, key)
        cdef object value
        if found is NULL:
            value = self.compute(year, month, day)
            if len(self.cache) >= self.limit:
                self.cache.clear()
            self.cache[key] = value
        else:
            value = <object>found
        if value is None:
            return -1
        out[0] = <int64_t>value
        return 0

    def __len__(self):
        return len(self.cache)


# --- output buffers ---------------------------------------------------------------------------------

cdef int grow(Out* out, Py_ssize_t extra) except -1:
    cdef Py_ssize_t need = out.length + extra
    cdef Py_ssize_t capacity
    cdef unsigned char* data
    if need <= out.capacity:
        return 0
    capacity = out.capacity * 2 if out.capacity else 256
    while capacity < need:
        capacity *= 2
    data = <unsigned char*>realloc(out.data, capacity)
    if data is NULL:
        raise MemoryError()
    out.data = data
    out.capacity = capacity
    return 0


cdef inline int put_bytes(Out* out, const unsigned char* src, Py_ssize_t size) except -1:
    if out.length + size > out.capacity:
        grow(out, size)
    if size:
        memcpy(out.data + out.length, src, size)
    out.length += size
    return 0


cdef inline int put_byte(Out* out, unsigned char value) except -1:
    if out.length + 1 > out.capacity:
        grow(out, 1)
    out.data[out.length] = value
    out.length += 1
    return 0


cdef inline int put_varint(Out* out, uint64_t value) except -1:
    if out.length + 10 > out.capacity:
        grow(out, 10)
    while value >= 0x80:
        out.data[out.length] = <unsigned char>((value & 0x7F) | 0x80)
        out.length += 1
        value >>= 7
    out.data[out.length] = <unsigned char>value
    out.length += 1
    return 0


cdef inline Py_ssize_t varint_size(uint64_t value) noexcept:
    cdef Py_ssize_t size = 1
    while value >= 0x80:
        value >>= 7
        size += 1
    return size


# --- reading ----------------------------------------------------------------------------------------

cdef inline int at(const unsigned char* s, Py_ssize_t i, Py_ssize_t n) noexcept:
    return s[i] if 0 <= i < n else -1


cdef inline Py_ssize_t skip_ws(const unsigned char* s, Py_ssize_t i, Py_ssize_t n) noexcept:
    cdef unsigned char c
    while i < n:
        c = s[i]
        if c == 32 or c == 10 or c == 13 or c == 9:
            i += 1
        else:
            break
    return i


cdef Py_ssize_t string_end(const unsigned char* s, Py_ssize_t i, Py_ssize_t n, bint* escaped) noexcept:
    """``i`` at an opening quote: the index past the closing one, or -1. Sets ``escaped`` when the
    string holds a backslash."""
    cdef unsigned char c
    cdef const unsigned char* quote
    i += 1
    # The common case first: the closing quote with no backslash or control character before it.
    quote = <const unsigned char*>memchr(s + i, 34, n - i) if i < n else NULL
    if quote is NULL:
        return -1
    if memchr(s + i, 92, quote - (s + i)) is NULL:
        # (A control character in it is left to the JSON check every text passes before or after.)
        return quote - s + 1
    while i < n:
        c = s[i]
        if c == 34:  # "
            return i + 1
        if c == 92:  # backslash
            escaped[0] = True
            i += 2
            continue
        if c < 32:
            return -1
        i += 1
    return -1


cdef inline int hex4(const unsigned char* s, Py_ssize_t i, Py_ssize_t n) noexcept:
    cdef int value = 0
    cdef int k, c
    if i + 4 > n:
        return -1
    for k in range(4):
        c = s[i + k]
        if 48 <= c <= 57:
            value = value * 16 + (c - 48)
        elif 97 <= c <= 102:
            value = value * 16 + (c - 87)
        elif 65 <= c <= 70:
            value = value * 16 + (c - 55)
        else:
            return -1
    return value


cdef int unescape(const unsigned char* s, Py_ssize_t i, Py_ssize_t end, Out* out) except -2:
    """Append the UTF-8 of the string content ``s[i:end]`` with its escapes resolved; -1 for an
    escape the reference would refuse or read otherwise (a lone surrogate, a bad escape)."""
    cdef unsigned char c, e
    cdef int cp, low
    while i < end:
        c = s[i]
        if c != 92:
            put_byte(out, c)
            i += 1
            continue
        if i + 1 >= end:
            return -1
        e = s[i + 1]
        i += 2
        if e == 34 or e == 92 or e == 47:  # " \ /
            put_byte(out, e)
        elif e == 98:  # b
            put_byte(out, 8)
        elif e == 102:  # f
            put_byte(out, 12)
        elif e == 110:  # n
            put_byte(out, 10)
        elif e == 114:  # r
            put_byte(out, 13)
        elif e == 116:  # t
            put_byte(out, 9)
        elif e == 117:  # u
            cp = hex4(s, i, end)
            if cp < 0:
                return -1
            i += 4
            if 0xD800 <= cp <= 0xDBFF:
                if i + 6 > end or s[i] != 92 or s[i + 1] != 117:
                    return -1
                low = hex4(s, i + 2, end)
                if not 0xDC00 <= low <= 0xDFFF:
                    return -1
                cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00)
                i += 6
            elif 0xDC00 <= cp <= 0xDFFF:
                return -1
            if cp < 0x80:
                put_byte(out, <unsigned char>cp)
            elif cp < 0x800:
                put_byte(out, <unsigned char>(0xC0 | (cp >> 6)))
                put_byte(out, <unsigned char>(0x80 | (cp & 0x3F)))
            elif cp < 0x10000:
                put_byte(out, <unsigned char>(0xE0 | (cp >> 12)))
                put_byte(out, <unsigned char>(0x80 | ((cp >> 6) & 0x3F)))
                put_byte(out, <unsigned char>(0x80 | (cp & 0x3F)))
            else:
                put_byte(out, <unsigned char>(0xF0 | (cp >> 18)))
                put_byte(out, <unsigned char>(0x80 | ((cp >> 12) & 0x3F)))
                put_byte(out, <unsigned char>(0x80 | ((cp >> 6) & 0x3F)))
                put_byte(out, <unsigned char>(0x80 | (cp & 0x3F)))
        else:
            return -1
    return 0


cdef Py_ssize_t plain_int(const unsigned char* s, Py_ssize_t i, Py_ssize_t n, int64_t* out) noexcept:
    """A JSON integer of 1-18 digits at ``i``: the index past it, or -1 (also for a fraction or an
    exponent, which the reference reads as a float)."""
    cdef bint negative = False
    cdef Py_ssize_t start
    cdef int64_t value = 0
    cdef int c
    if at(s, i, n) == 45:  # -
        negative = True
        i += 1
    start = i
    while i < n and 48 <= s[i] <= 57:
        value = value * 10 + (s[i] - 48)
        i += 1
        if i - start > 18:
            return -1
    if i == start or (i - start > 1 and s[start] == 48):
        return -1
    c = at(s, i, n)
    if c == 46 or c == 101 or c == 69:  # . e E
        return -1
    out[0] = -value if negative else value
    return i


cdef Py_ssize_t skip_value(const unsigned char* s, Py_ssize_t i, Py_ssize_t n) noexcept:
    """Any JSON value at ``i`` (an unknown key's): the index past it, or -1."""
    cdef int c = at(s, i, n)
    cdef Py_ssize_t depth = 0
    cdef bint escaped = False
    cdef Py_ssize_t start
    if c == 34:
        return string_end(s, i, n, &escaped)
    if c == 123 or c == 91:  # { [
        while i < n:
            c = s[i]
            if c == 34:
                i = string_end(s, i, n, &escaped)
                if i < 0:
                    return -1
                continue
            if c == 123 or c == 91:
                depth += 1
            elif c == 125 or c == 93:
                depth -= 1
                if depth == 0:
                    return i + 1
            i += 1
        return -1
    if c < 0:
        return -1
    start = i
    while i < n:
        c = s[i]
        if c == 44 or c == 125 or c == 93 or c == 32 or c == 10 or c == 13 or c == 9:
            break
        i += 1
    return i if i > start else -1


cdef inline bint literal(const unsigned char* s, Py_ssize_t i, Py_ssize_t n, const char* word, Py_ssize_t size) noexcept:
    return i + size <= n and memcmp(s + i, word, size) == 0


cdef int days_in_month(int year, int month) noexcept:
    if month == 2:
        return 29 if (year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)) else 28
    if month == 4 or month == 6 or month == 9 or month == 11:
        return 30
    return 31


cdef int64_t days_from_civil(int64_t y, int64_t m, int64_t d) noexcept:
    # Days since 1970-01-01 (proleptic Gregorian), after H. Hinnant's algorithm.
    y -= m <= 2
    cdef int64_t era = (y if y >= 0 else y - 399) // 400
    cdef int64_t yoe = y - era * 400
    cdef int64_t doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    cdef int64_t doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


cdef inline int digits(const unsigned char* d, Py_ssize_t* pi, Py_ssize_t n, int least, int most) noexcept:
    cdef Py_ssize_t i = pi[0]
    cdef int value = 0
    cdef int count = 0
    while i < n and count < most and 48 <= d[i] <= 57:
        value = value * 10 + (d[i] - 48)
        i += 1
        count += 1
    if count < least:
        return -1
    pi[0] = i
    return value


cdef const char* MONTHS = b"JanFebMarAprMayJunJulAugSepOctNovDec"


cdef int gson_date(const unsigned char* d, Py_ssize_t n, Days days, int64_t* out) except -2:
    """Gson's ``MMM d, yyyy[,] h:mm:ss a`` (translate._DATE_RE) in the zone of ``days``: seconds since
    the epoch, or -1 for anything the compiled path leaves to the reference."""
    cdef Py_ssize_t i = 0
    cdef int month = 0, day, year, hour, minute, second, k
    cdef int64_t offset
    if n < 20:
        return -1
    for k in range(12):
        if memcmp(d, MONTHS + 3 * k, 3) == 0:
            month = k + 1
            break
    if month == 0 or d[3] != 32:
        return -1
    i = 4
    day = digits(d, &i, n, 1, 2)
    if day < 0 or at(d, i, n) != 44 or at(d, i + 1, n) != 32:
        return -1
    i += 2
    year = digits(d, &i, n, 4, 4)
    if year < 0:
        return -1
    if at(d, i, n) == 44:
        i += 1
    if at(d, i, n) != 32:
        return -1
    i += 1
    hour = digits(d, &i, n, 1, 2)
    if hour < 0 or at(d, i, n) != 58:
        return -1
    i += 1
    minute = digits(d, &i, n, 2, 2)
    if minute < 0 or at(d, i, n) != 58:
        return -1
    i += 1
    second = digits(d, &i, n, 2, 2)
    if second < 0:
        return -1
    # The separator before AM/PM: a space, U+202F or U+00A0.
    if at(d, i, n) == 32:
        i += 1
    elif at(d, i, n) == 0xE2 and at(d, i + 1, n) == 0x80 and at(d, i + 2, n) == 0xAF:
        i += 3
    elif at(d, i, n) == 0xC2 and at(d, i + 1, n) == 0xA0:
        i += 2
    else:
        return -1
    if i + 2 != n or d[i + 1] != 77 or (d[i] != 65 and d[i] != 80):  # AM / PM
        return -1
    if not 1 <= hour <= 12 or minute > 59 or second > 59:
        return -1
    if not MIN_YEAR <= year <= MAX_YEAR or not 1 <= day <= days_in_month(year, month):
        return -1
    if days.offset(year, month, day, &offset) < 0:
        return -1
    hour = hour % 12 + (12 if d[i] == 80 else 0)
    out[0] = days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second - offset
    return 0


# --- one message ------------------------------------------------------------------------------------

cdef struct Input:
    const unsigned char* s
    Py_ssize_t n


cdef inline const Field* lookup(const Table* table, const unsigned char* key, Py_ssize_t size) noexcept:
    cdef int k
    for k in range(table.count):
        if table.fields[k].key_len == size and memcmp(table.fields[k].key, key, size) == 0:
            return &table.fields[k]
    return NULL


cdef Py_ssize_t read_object(
    Input* src, Py_ssize_t i, const Table* table, Slot* slots, Out* scratch, Out* refs, Days days
) except -2:
    """The object at ``i`` into ``slots`` (and, for an image, its refs serialized into ``refs``): the
    index past it, or -1."""
    cdef const unsigned char* s = src.s
    cdef Py_ssize_t n = src.n
    cdef Py_ssize_t j, key_at, key_len
    cdef bint escaped
    cdef const Field* field
    cdef Slot* slot
    cdef int c
    cdef int64_t value, seconds, millis
    cdef Slot ref_slots[MAX_FIELDS]
    if at(s, i, n) != 123:
        return -1
    i = skip_ws(s, i + 1, n)
    if at(s, i, n) == 125:
        return i + 1
    while True:
        if at(s, i, n) != 34:
            return -1
        escaped = False
        j = string_end(s, i, n, &escaped)
        if j < 0 or escaped:
            return -1
        key_at = i + 1
        key_len = j - i - 2
        i = skip_ws(s, j, n)
        if at(s, i, n) != 58:  # :
            return -1
        i = skip_ws(s, i + 1, n)
        c = at(s, i, n)
        if c < 0:
            return -1
        field = lookup(table, s + key_at, key_len)
        if field is NULL:
            i = skip_value(s, i, n)
            if i < 0:
                return -1
        elif c == 110:  # null: the field stays unset, whatever came before under this key
            if not literal(s, i, n, b"null", 4):
                return -1
            i += 4
            if field.kind == K_REFS:
                refs.length = 0
            else:
                slots[field.number].state = S_UNSET
        else:
            slot = &slots[field.number]
            if field.kind == K_STR:
                if c != 34:
                    return -1
                escaped = False
                j = string_end(s, i, n, &escaped)
                if j < 0:
                    return -1
                if escaped:
                    slot.start = scratch.length
                    if unescape(s, i + 1, j - 1, scratch) < 0:
                        return -1
                    slot.state = S_SCRATCH
                    slot.length = scratch.length - slot.start
                else:
                    slot.state = S_SPAN
                    slot.start = i + 1
                    slot.length = j - i - 2
                i = j
            elif field.kind == K_INT:
                i = plain_int(s, i, n, &value)
                if i < 0:
                    return -1
                slot.state = S_INT
                slot.value = value
            elif field.kind == K_BOOL:
                if literal(s, i, n, b"true", 4):
                    slot.value = 1
                    i += 4
                elif literal(s, i, n, b"false", 5):
                    slot.value = 0
                    i += 5
                else:
                    return -1
                slot.state = S_BOOL
            elif field.kind == K_DATE:
                if c == 34:
                    escaped = False
                    j = string_end(s, i, n, &escaped)
                    if j < 0 or escaped:
                        return -1
                    if gson_date(s + i + 1, j - i - 2, days, &seconds) < 0:
                        return -1
                    slot.nanos = 0
                    i = j
                else:
                    i = plain_int(s, i, n, &value)
                    if i < 0:
                        return -1
                    seconds = value // 1000
                    millis = value % 1000
                    if millis < 0:
                        seconds -= 1
                        millis += 1000
                    if not TS_MIN_SECONDS <= seconds <= TS_MAX_SECONDS:
                        return -1
                    slot.nanos = millis * 1000000
                slot.state = S_STAMP
                slot.value = seconds
            else:  # K_REFS: a list of objects
                if c != 91:
                    return -1
                refs.length = 0
                i = skip_ws(s, i + 1, n)
                if at(s, i, n) == 93:
                    i += 1
                else:
                    while True:
                        clear(ref_slots, REF_TABLE.top)
                        i = read_object(src, i, &REF_TABLE, ref_slots, scratch, NULL, days)
                        if i < 0:
                            return -1
                        write_message(refs, REFS_NUMBER, &REF_TABLE, ref_slots, s, scratch)
                        i = skip_ws(s, i, n)
                        c = at(s, i, n)
                        if c == 93:
                            i += 1
                            break
                        if c != 44:
                            return -1
                        i = skip_ws(s, i + 1, n)
        i = skip_ws(s, i, n)
        c = at(s, i, n)
        if c == 125:  # }
            return i + 1
        if c != 44:
            return -1
        i = skip_ws(s, i + 1, n)


cdef inline void clear(Slot* slots, int top) noexcept:
    cdef int k
    for k in range(top + 1):
        slots[k].state = S_UNSET


cdef inline Py_ssize_t tag_size(int number) noexcept:
    return 1 if number < 16 else 2


cdef inline Py_ssize_t stamp_size(const Slot* slot) noexcept:
    cdef Py_ssize_t size = 0
    if slot.value:
        size += 1 + varint_size(<uint64_t>slot.value)
    if slot.nanos:
        size += 1 + varint_size(<uint64_t>slot.nanos)
    return size


cdef Py_ssize_t fields_size(const Table* table, const Slot* slots) noexcept:
    cdef Py_ssize_t size = 0, body
    cdef int number
    cdef const Slot* slot
    for number in range(1, table.top + 1):
        slot = &slots[number]
        if slot.state == S_UNSET:
            continue
        size += tag_size(number)
        if slot.state == S_SPAN or slot.state == S_SCRATCH:
            size += varint_size(<uint64_t>slot.length) + slot.length
        elif slot.state == S_INT:
            size += varint_size(<uint64_t>slot.value)
        elif slot.state == S_BOOL:
            size += 1
        else:
            body = stamp_size(slot)
            size += varint_size(<uint64_t>body) + body
    return size


cdef int write_fields(
    Out* out, const Table* table, const Slot* slots, const unsigned char* s, const Out* scratch
) except -1:
    """Every set field of ``slots`` in field-number order (protobuf's serialization order)."""
    cdef int number
    cdef const Slot* slot
    for number in range(1, table.top + 1):
        slot = &slots[number]
        if slot.state == S_UNSET:
            continue
        if slot.state == S_SPAN or slot.state == S_SCRATCH:
            put_varint(out, <uint64_t>((number << 3) | 2))
            put_varint(out, <uint64_t>slot.length)
            if slot.state == S_SPAN:
                put_bytes(out, s + slot.start, slot.length)
            else:
                put_bytes(out, scratch.data + slot.start, slot.length)
        elif slot.state == S_INT or slot.state == S_BOOL:
            put_varint(out, <uint64_t>(number << 3))
            put_varint(out, <uint64_t>slot.value)
        else:
            put_varint(out, <uint64_t>((number << 3) | 2))
            put_varint(out, <uint64_t>stamp_size(slot))
            if slot.value:
                put_byte(out, 0x08)
                put_varint(out, <uint64_t>slot.value)
            if slot.nanos:
                put_byte(out, 0x10)
                put_varint(out, <uint64_t>slot.nanos)
    return 0


cdef int write_message(
    Out* out, int number, const Table* table, const Slot* slots, const unsigned char* s, const Out* scratch
) except -1:
    put_varint(out, <uint64_t>((number << 3) | 2))
    put_varint(out, <uint64_t>fields_size(table, slots))
    write_fields(out, table, slots, s, scratch)
    return 0


cdef int translate(
    Input* src, Py_ssize_t start, Py_ssize_t end, Days days, Out* out, Out* scratch, Out* refs
) except -2:
    """Append to ``out`` the serialized image whose text is ``src.s[start:end]``; -1 (``out`` as it
    was) to leave it to the reference."""
    cdef Slot slots[MAX_FIELDS]
    cdef Py_ssize_t stop
    scratch.length = 0
    refs.length = 0
    clear(slots, IMAGE_TABLE.top)
    stop = read_object(src, skip_ws(src.s, start, end), &IMAGE_TABLE, slots, scratch, refs, days)
    if stop < 0 or stop > end or skip_ws(src.s, stop, end) != end:
        return -1
    grow(out, fields_size(&IMAGE_TABLE, slots) + refs.length)
    write_fields(out, &IMAGE_TABLE, slots, src.s, scratch)
    put_bytes(out, refs.data, refs.length)
    return 0


def image(object text, Days days not None):
    """The serialized ImageInventory for the JSON text of one image (any object with the buffer
    protocol: bytes, msgspec.Raw), or None to leave it to the reference translation."""
    cdef Py_buffer view
    cdef Input src
    cdef Out out, scratch, refs
    if not _configured:
        return None
    PyObject_GetBuffer(text, &view, PyBUF_SIMPLE)
    out.data = scratch.data = refs.data = NULL
    out.length = scratch.length = refs.length = 0
    out.capacity = scratch.capacity = refs.capacity = 0
    try:
        src.s = <const unsigned char*>view.buf
        src.n = view.len
        if translate(&src, 0, src.n, days, &out, &scratch, &refs) < 0:
            return None
        return PyBytes_FromStringAndSize(<const char*>out.data, out.length)
    finally:
        PyBuffer_Release(&view)
        free(out.data)
        free(scratch.data)
        free(refs.data)


#: Why take() stopped.
FULL = 0       # max_images taken, or the next image does not fit in max_bytes (size: its framed size)
END = 1        # the list's end
REFERENCE = 2  # the next image is left to the reference translation
LOST = 3       # the text does not read as a list at pos


def take(object text, Py_ssize_t pos, Py_ssize_t max_images, Py_ssize_t max_bytes, Days days not None):
    """Translate the images of the JSON list ``text`` from ``pos`` (1, just past its ``[``, or where
    the image before ended), each framed as field 1 of GetCandidateIsoResponse, while at most
    ``max_images`` images and ``max_bytes`` bytes are taken.

    Returns ``(data, images, pos, stop, size)``: the framed images, how many, where the next one
    starts, why it stopped (FULL, END, REFERENCE, LOST) and, for FULL on an image that did not fit,
    that image's framed size (else 0)."""
    cdef Py_buffer view
    cdef Input src
    cdef Out out, one, scratch, refs
    cdef Py_ssize_t count = 0, size = 0, i, end
    cdef int c, stop = FULL
    PyObject_GetBuffer(text, &view, PyBUF_SIMPLE)
    out.data = one.data = scratch.data = refs.data = NULL
    out.length = one.length = scratch.length = refs.length = 0
    out.capacity = one.capacity = scratch.capacity = refs.capacity = 0
    try:
        src.s = <const unsigned char*>view.buf
        src.n = view.len
        if not _configured or at(src.s, 0, src.n) != 91 or not 1 <= pos <= src.n:
            stop = LOST
        while stop == FULL and count < max_images:
            i = skip_ws(src.s, pos, src.n)
            c = at(src.s, i, src.n)
            if c == 93:  # ]
                stop = END
                break
            if pos > 1:
                if c != 44:
                    stop = LOST
                    break
                i = skip_ws(src.s, i + 1, src.n)
            end = skip_value(src.s, i, src.n)
            if end < 0:
                stop = LOST
                break
            one.length = 0
            if translate(&src, i, end, days, &one, &scratch, &refs) < 0:
                stop = REFERENCE
                break
            size = 1 + varint_size(<uint64_t>one.length) + one.length
            if out.length + size > max_bytes:
                break
            size = 0
            put_byte(&out, 0x0A)
            put_varint(&out, <uint64_t>one.length)
            put_bytes(&out, one.data, one.length)
            count += 1
            pos = end
        return (PyBytes_FromStringAndSize(<const char*>out.data, out.length), count, pos, stop, size)
    finally:
        PyBuffer_Release(&view)
        free(out.data)
        free(one.data)
        free(scratch.data)
        free(refs.data)


def next_item(object text, Py_ssize_t pos):
    """Where the next item of a JSON list starts and ends: ``text`` is the list's text, ``pos`` is 1
    (just past its ``[``) or where the item before ended. (-1, -1) at the list's end; ValueError
    where the text does not read as a list."""
    cdef Py_buffer view
    cdef const unsigned char* s
    cdef Py_ssize_t n, i, end
    cdef int c
    PyObject_GetBuffer(text, &view, PyBUF_SIMPLE)
    try:
        s = <const unsigned char*>view.buf
        n = view.len
        if at(s, 0, n) != 91 or not 1 <= pos <= n:
            raise ValueError("not a list, or a position outside it")
        i = skip_ws(s, pos, n)
        c = at(s, i, n)
        if c == 93:  # ]
            return (-1, -1)
        if pos > 1:  # after an item: a comma, then the next one
            if c != 44:
                raise ValueError("no comma between items")
            i = skip_ws(s, i + 1, n)
        end = skip_value(s, i, n)
        if end < 0:
            raise ValueError("an item that does not end")
        return (i, end)
    finally:
        PyBuffer_Release(&view)


cdef const char* INVENTORIES = b"inventories"


def list_start(object text, Py_ssize_t limit):
    """Where the list under the top-level key ``inventories`` starts in the body ``text`` (an object),
    found within the first ``limit`` bytes; -1 for anything else (another shape, an escaped key, a key
    before it whose value runs past ``limit``): the caller then checks the body the usual way."""
    cdef Py_buffer view
    cdef const unsigned char* s
    cdef Py_ssize_t n, i, j
    cdef bint escaped, found
    PyObject_GetBuffer(text, &view, PyBUF_SIMPLE)
    try:
        s = <const unsigned char*>view.buf
        n = min(view.len, limit)
        i = skip_ws(s, 0, n)
        if at(s, i, n) != 123:
            return -1
        i = skip_ws(s, i + 1, n)
        while True:
            if at(s, i, n) != 34:
                return -1
            escaped = False
            j = string_end(s, i, n, &escaped)
            if j < 0 or escaped:
                return -1
            found = j - i - 2 == 11 and memcmp(s + i + 1, INVENTORIES, 11) == 0
            i = skip_ws(s, j, n)
            if at(s, i, n) != 58:
                return -1
            i = skip_ws(s, i + 1, n)
            if found:
                return i if at(s, i, n) == 91 else -1
            i = skip_value(s, i, n)
            if i < 0:
                return -1
            i = skip_ws(s, i, n)
            if at(s, i, n) != 44:
                return -1
            i = skip_ws(s, i + 1, n)
    finally:
        PyBuffer_Release(&view)


def items_span(object text, Py_ssize_t pos, Py_ssize_t size):
    """From ``pos`` in a list's text (just past its ``[``, or where an item ended), the items that
    start within the next ``size`` bytes: ``(first, last, end)``, the first one's start (``last``
    when there is none), the last one's end, and past the list's ``]`` when the list ends there
    (else -1). ValueError where the text does not read as a list."""
    cdef Py_buffer view
    cdef const unsigned char* s
    cdef Py_ssize_t n, i, first = -1, last = pos, stop
    cdef int c
    cdef bint opening
    PyObject_GetBuffer(text, &view, PyBUF_SIMPLE)
    try:
        s = <const unsigned char*>view.buf
        n = view.len
        if not 1 <= pos <= n:
            raise ValueError("a position outside the text")
        opening = s[pos - 1] == 91
        stop = pos + size
        i = pos
        while True:
            i = skip_ws(s, i, n)
            c = at(s, i, n)
            if c == 93:
                return (first if first >= 0 else last, last, i + 1)
            if i >= stop:
                return (first if first >= 0 else last, last, -1)
            if not opening:
                if c != 44:
                    raise ValueError("no comma between items")
                i = skip_ws(s, i + 1, n)
            opening = False
            if first < 0:
                first = i
            i = skip_value(s, i, n)
            if i < 0:
                raise ValueError("an item that does not end")
            last = i
    finally:
        PyBuffer_Release(&view)


def complete_items(object text, Py_ssize_t pos):
    """Like items_span, for a list whose text is still arriving: from ``pos`` (just past its ``[``,
    or where an item ended), the items already complete, each followed by a comma or the list's
    ``]`` within the text (an item the text ends in may go on: a number, or what has not arrived).
    Returns ``(first, last, end)``: the first one's start (``last`` when there is none), the last
    one's end, and past the list's ``]`` when it is in the text (else -1). ValueError where the text
    that arrived does not read as a list."""
    cdef Py_buffer view
    cdef const unsigned char* s
    cdef Py_ssize_t n, i, j, first = -1, last = pos
    cdef int c
    cdef bint opening
    PyObject_GetBuffer(text, &view, PyBUF_SIMPLE)
    try:
        s = <const unsigned char*>view.buf
        n = view.len
        if not 1 <= pos <= n:
            raise ValueError("a position outside the text")
        opening = s[pos - 1] == 91
        i = pos
        while True:
            i = skip_ws(s, i, n)
            c = at(s, i, n)
            if c < 0:
                break
            if c == 93:
                return (first if first >= 0 else last, last, i + 1)
            if not opening:
                if c != 44:
                    raise ValueError("no comma between items")
                i = skip_ws(s, i + 1, n)
                if i >= n:
                    break
            j = skip_value(s, i, n)
            if j < 0:
                break  # not all here yet (or an item that never ends: the full check says so)
            c = at(s, skip_ws(s, j, n), n)
            if c < 0:
                break
            if c != 44 and c != 93:
                raise ValueError("no comma between items")
            opening = False
            if first < 0:
                first = i
            last = i = j
        return (first if first >= 0 else last, last, -1)
    finally:
        PyBuffer_Release(&view)


def top_level_key(object text, Py_ssize_t pos):
    """What follows a member's value in a body's top-level object, from ``pos``: 0 for members with
    neither the key ``inventories`` nor an escaped key, then the closing brace; 1 for such a key; -1
    where it does not read as the rest of an object."""
    cdef Py_buffer view
    cdef const unsigned char* s
    cdef Py_ssize_t n, i, j
    cdef bint escaped
    PyObject_GetBuffer(text, &view, PyBUF_SIMPLE)
    try:
        s = <const unsigned char*>view.buf
        n = view.len
        i = skip_ws(s, pos, n)
        while True:
            if at(s, i, n) == 125:
                return 0 if skip_ws(s, i + 1, n) == n else -1
            if at(s, i, n) != 44:
                return -1
            i = skip_ws(s, i + 1, n)
            if at(s, i, n) != 34:
                return -1
            escaped = False
            j = string_end(s, i, n, &escaped)
            if j < 0:
                return -1
            if escaped or (j - i - 2 == 11 and memcmp(s + i + 1, INVENTORIES, 11) == 0):
                return 1
            i = skip_ws(s, j, n)
            if at(s, i, n) != 58:
                return -1
            i = skip_value(s, skip_ws(s, i + 1, n), n)
            if i < 0:
                return -1
            i = skip_ws(s, i, n)
    finally:
        PyBuffer_Release(&view)
