# SPDX-License-Identifier: MIT
# pgsteer build. `make` builds ./pgsteer; `make test` installs what the tests need,
# runs the unit tests and the integration tests against a real primary and two replicas.

CC      ?= cc
PKGS    := libuv yaml-0.1 libpq libssl libcrypto
CFLAGS  ?= -O2 -g
CFLAGS  += -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -Iinclude \
           $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
LDLIBS  += $(shell pkg-config --libs $(PKGS) 2>/dev/null || echo -luv -lyaml -lpq -lssl -lcrypto) -lpthread

ifeq ($(SAN),1)
CFLAGS  += -O1 -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
LDFLAGS += -fsanitize=address,undefined
BUILD   := build/san
else ifeq ($(SAN),thread)
CFLAGS  += -O1 -fsanitize=thread -fno-omit-frame-pointer
LDFLAGS += -fsanitize=thread
BUILD   := build/tsan
else
BUILD   := build/rel
endif

SRCS    := $(wildcard src/*.c)
OBJS    := $(patsubst src/%.c,$(BUILD)/%.o,$(SRCS))
LIBOBJS := $(filter-out $(BUILD)/main.o,$(OBJS))
UNIT_SRCS := $(wildcard tests/unit/test_*.c)
UNIT_BINS := $(patsubst tests/unit/%.c,$(BUILD)/tests/%,$(UNIT_SRCS))

.PHONY: all pgsteer deps test unit integration test-drivers demo bench bench-conns bench-instructions clean format \
        format-check

all: pgsteer

# ./pgsteer is a copy of the flavour built last (release, SAN=1 or SAN=thread), refreshed whenever
# it differs: run `make` after a sanitizer build before measuring anything.
pgsteer: $(BUILD)/pgsteer
	@cmp -s $< $@ || cp -f $< $@

$(BUILD)/pgsteer: $(OBJS)
	$(CC) $(LDFLAGS) -o $@ $(OBJS) $(LDLIBS)

$(BUILD)/%.o: src/%.c $(wildcard include/*.h) | $(BUILD)
	$(CC) $(CFLAGS) -MMD -c -o $@ $<

$(BUILD) $(BUILD)/tests:
	mkdir -p $@

$(BUILD)/tests/%: tests/unit/%.c $(LIBOBJS) | $(BUILD)/tests
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(LIBOBJS) $(LDLIBS) -lcmocka

deps:
	@scripts/deps.sh test

unit: $(UNIT_BINS)
	@set -e; for t in $(UNIT_BINS); do echo "== $$t"; $$t; done

integration: pgsteer
	@tests/integration/run.sh

test: deps
	@$(MAKE) --no-print-directory all unit
	@$(MAKE) --no-print-directory integration
	@$(MAKE) --no-print-directory test-drivers

# The drivers' cases run three times: as pgsteer is by default, with sessions' reads sharing
# backends (multiplex_reads), which every driver's statements must not notice, and with every
# driver over TLS (client_tls: require; each checks pgsteer's certificate).
test-drivers: pgsteer
	@scripts/deps.sh drivers
	@tests/drivers/run.sh
	@PGSTEER_EXTRA_YAML='multiplex_reads: on' tests/drivers/run.sh
	@PGSTEER_DRIVERS_TLS=1 tests/drivers/run.sh

bench:
	@scripts/deps.sh bench
	@$(MAKE) --no-print-directory all
	@/usr/bin/python3 scripts/bench.py $(BENCH_ARGS)

bench-conns:
	@scripts/deps.sh bench
	@$(MAKE) --no-print-directory all
	@/usr/bin/python3 scripts/bench.py --idle-conns 10000

bench-instructions:
	@scripts/deps.sh bench
	@$(MAKE) --no-print-directory all
	@/usr/bin/python3 scripts/bench.py --instructions $(BENCH_ARGS)

demo:
	@scripts/deps.sh demo
	@$(MAKE) --no-print-directory all
	@scripts/demo.sh

clean:
	rm -rf build pgsteer

FMT_FILES := $(wildcard src/*.c include/*.h tests/unit/*.c)
format:
	clang-format -i $(FMT_FILES)
format-check:
	clang-format --dry-run --Werror $(FMT_FILES)

-include $(OBJS:.o=.d)
