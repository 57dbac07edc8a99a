using ActorBlk.Host.Bench;
using ActorBlk.Host.Commands;
using Xunit;

namespace ActorBlk.Host.Tests;

/// <summary>
/// <c>actorblk bench</c>'s sizes (<c>--bs</c>, <c>--size</c>) read as fio 3.33 reads them with its
/// default <c>kb_base=1024</c> (parse.c <c>str_to_decimal</c>, <c>__get_mult_bytes</c>). Each
/// accepted value is the one fio 3.33 gave for it here (<c>fio --debug=parse --size=...</c>,
/// its <c>out=</c>). The bench refused <c>p</c>, <c>0x</c> and <c>Mi</c>, and took <c>KiB</c> as
/// 1024 where fio takes 1000 (an audit).
/// </summary>
public sealed class BenchSizeSpec
{
    [Theory]
    [InlineData("4096", 4096L)]
    [InlineData("1b", 1L)]
    [InlineData("1B", 1L)]
    [InlineData("1k", 1024L)]
    [InlineData("1K", 1024L)]
    [InlineData("1kB", 1024L)]
    [InlineData("1KB", 1024L)]
    [InlineData("1Ki", 1024L)]                          // not "kib": the k alone decides
    [InlineData("1kib", 1000L)]                         // kb_base=1024 turns the IEC prefixes round
    [InlineData("1KiB", 1000L)]
    [InlineData("1M", 1048576L)]
    [InlineData("1Mi", 1048576L)]
    [InlineData("1g", 1073741824L)]
    [InlineData("1gb", 1073741824L)]
    [InlineData("1GB", 1073741824L)]
    [InlineData("1GiB", 1000000000L)]
    [InlineData("1t", 1099511627776L)]
    [InlineData("1tb", 1099511627776L)]
    [InlineData("1p", 1125899906842624L)]
    [InlineData("1pib", 1000000000000000L)]
    [InlineData("1PiB", 1000000000000000L)]
    [InlineData("8191p", 9222246136947933184L)]
    [InlineData("0x10", 16L)]
    [InlineData("0X1000", 4096L)]
    [InlineData("9223372036854775807", long.MaxValue)]
    public void A_size_is_what_fio_3_33_reads(string text, long bytes) =>
        Assert.Equal(bytes, Sizes.Parse("size", text));

    // fio has no exa unit: it ignores the unknown unit and takes 1e as 1 byte. Refused here, and
    // said why.
    [Theory]
    [InlineData("1e", "1")]
    [InlineData("1E", "1")]
    [InlineData("1eib", "1")]
    [InlineData("1EiB", "1")]
    [InlineData("16384e", "16384")]
    public void Exa_is_refused_as_fio_has_no_such_unit(string text, string fioReads)
    {
        var error = Assert.Throws<UsageException>(() => Sizes.Parse("size", text));
        Assert.Equal($"option --size: '{text}' is not a size: fio has no e (exa) unit, its largest is p (1024^5), and would take '{text}' as {fioReads}, the unit ignored.", error.Message);
    }

    // fio wraps these (8192p is 2^63, which it prints as 9223372036854775808, and refuses only a
    // number past strtoll's range).
    [Theory]
    [InlineData("9223372036854775808")]
    [InlineData("99999999999999999999999")]
    [InlineData("8192p")]
    [InlineData("8388608t")]
    [InlineData("9007199254740992k")]
    [InlineData("0x8000000000000000")]
    public void A_size_past_2_pow_63_is_refused(string text)
    {
        var error = Assert.Throws<UsageException>(() => Sizes.Parse("size", text));
        Assert.Equal($"option --size: '{text}' is more than 2^63 - 1 bytes (9223372036854775807), the largest size.", error.Message);
    }

    // fio takes most of these with the unit ignored or cut (4q is 4, 1.5k is 1, 0x10k is 16, 10% a
    // share of the file); refused here.
    [Theory]
    [InlineData("4q")]
    [InlineData("k")]
    [InlineData("")]
    [InlineData("1.5k")]
    [InlineData("1kk")]
    [InlineData("1kibb")]
    [InlineData("-1k")]
    [InlineData("0x10k")]
    [InlineData("0x")]
    [InlineData("10%")]
    public void Anything_else_is_not_a_size(string text)
    {
        var error = Assert.Throws<UsageException>(() => Sizes.Parse("bs", text));
        Assert.Equal($"option --bs: '{text}' is not a size (bytes, or a number with k, m, g, t or p: 4k, 1m, 2g).", error.Message);
    }

    [Fact]
    public void The_command_line_takes_fios_units()
    {
        var options = BenchCommandLine.Parse("--size=1p", "--bs=0x1000");
        Assert.Equal(1L << 50, options.Size);
        Assert.Equal(4096, options.BlockSize);

        // 1GiB is 10^9 bytes, a multiple of 512: fio's size, taken.
        Assert.Equal(1_000_000_000L, BenchCommandLine.Parse("--size=1GiB").Size);
    }

    [Theory]
    [InlineData("--bs=4KiB", "option --bs: '4KiB' is 4000 bytes, not a multiple of 512: with fio's default kb_base=1024 KiB, MiB, GiB, TiB and PiB are powers of 1000, and k, m, g, t and p (kB, Ki ...) powers of 1024.")]
    [InlineData("--size=1MiB", "option --size: '1MiB' is 1000000 bytes, not a multiple of 512: with fio's default kb_base=1024 KiB, MiB, GiB, TiB and PiB are powers of 1000, and k, m, g, t and p (kB, Ki ...) powers of 1024.")]
    public void A_decimal_unit_that_misses_512_says_why(string arg, string message)
    {
        var error = Assert.Throws<UsageException>(() => BenchCommandLine.Parse(arg));
        Assert.Equal(message, error.Message);
    }

    // fio 3.33 with kb_base=1000 (parse.c __get_mult_bytes: "If kb_base is 1000, use true
    // units"): k, m ... are powers of 1000 and KiB, MiB ... of 1024. The bench had no --kb_base.
    [Theory]
    [InlineData("1k", 1000L)]
    [InlineData("1kB", 1000L)]
    [InlineData("1Ki", 1000L)]
    [InlineData("1KiB", 1024L)]
    [InlineData("1m", 1_000_000L)]
    [InlineData("1MiB", 1_048_576L)]
    [InlineData("1g", 1_000_000_000L)]
    [InlineData("1GiB", 1_073_741_824L)]
    [InlineData("1p", 1_000_000_000_000_000L)]
    [InlineData("1PiB", 1_125_899_906_842_624L)]
    [InlineData("4096", 4096L)]
    [InlineData("0x1000", 4096L)]
    public void A_size_under_kb_base_1000_is_what_fio_3_33_reads(string text, long bytes) =>
        Assert.Equal(bytes, Sizes.Parse("size", text, kbBase: 1000));

    // fio reads its command line's options in order (init.c fio_cmd_option_parse, one at a time),
    // so --kb_base applies to the sizes after it: fio 3.33's null engine moved 999424 bytes for
    // "--kb_base=1000 --size=1m" (1,000,000 in 4096-byte blocks) and 1048576 for
    // "--size=1m --kb_base=1000". The report's units follow the last --kb_base.
    [Fact]
    public void Kb_base_applies_to_the_sizes_after_it_as_fio_reads_its_command_line()
    {
        var after = BenchCommandLine.Parse("--kb_base=1000", "--bs=8KiB", "--size=4MiB");
        Assert.Equal((8192, 4_194_304L, 1000), (after.BlockSize, after.Size, after.KbBase));

        var before = BenchCommandLine.Parse("--size=1m", "--bs=4k", "--kb_base=1000");
        Assert.Equal((4096, 1_048_576L, 1000), (before.BlockSize, before.Size, before.KbBase));

        var back = BenchCommandLine.Parse("--kb_base", "1000", "--size=1000KiB", "--kb_base=1024", "--bs=4k");
        Assert.Equal((4096, 1_024_000L, 1024), (back.BlockSize, back.Size, back.KbBase));

        Assert.Equal(1024, BenchCommandLine.Parse().KbBase);
        Assert.Throws<UsageException>(() => BenchCommandLine.Parse("--kb_base=1048"));
    }

    [Fact]
    public void A_unit_of_1000_that_misses_512_under_kb_base_1000_says_why()
    {
        var error = Assert.Throws<UsageException>(() => BenchCommandLine.Parse("--kb_base=1000", "--bs=4k"));
        Assert.Equal("option --bs: '4k' is 4000 bytes, not a multiple of 512: with kb_base=1000 k, m, g, t and p (kB, Ki ...) are powers of 1000, and KiB, MiB, GiB, TiB and PiB powers of 1024.", error.Message);
    }

    // fio 3.33's bs: READ,WRITE,TRIM (parse.c handle_option), each case as fio 3.33 printed it in
    // its job line ("bs=(R) 4096B-4096B, (W) 8192B-8192B, (T) ..."). The bench refused them all
    // as "not a size".
    [Theory]
    [InlineData(",8k", null, 8192L, 8192L)]
    [InlineData("4k,8k", 4096L, 8192L, 8192L)]
    [InlineData("4k,8k,16k", 4096L, 8192L, 16384L)]
    [InlineData("4k,", 4096L, null, null)]
    [InlineData("8k,", 8192L, null, null)]                // fio 3.33: (R) 8192B, (W) 4096B, (T) 4096B
    [InlineData("8k,,16k", 8192L, null, 16384L)]
    [InlineData(",,16k", null, null, 16384L)]
    [InlineData("4k,8k,16k,32k", 4096L, 8192L, 16384L)]
    [InlineData("4k:8k", 4096L, 8192L, 8192L)]
    [InlineData("4k-8k", 4096L, 8192L, 8192L)]
    [InlineData("8k", 8192L, 8192L, 8192L)]
    public void Split_block_sizes_fill_the_directions_as_fio_3_33_does(string text, long? read, long? write, long? trim)
    {
        var (r, w, t) = Sizes.ParseSplit("bs", text);
        Assert.Equal((read, write, trim), (r?.Bytes, w?.Bytes, t?.Bytes));
    }

    [Theory]
    [InlineData("--rw=randread --bs=4k,8k", 4096)]
    [InlineData("--rw=randwrite --bs=4k,8k", 8192)]
    [InlineData("--rw=write --bs=,8k", 8192)]
    [InlineData("--rw=read --bs=,8k", 4096)]              // reads keep the default, 4096
    [InlineData("--rw=randrw --bs=8k,8k", 8192)]
    [InlineData("--rw=randrw --rwmixread=100 --bs=4k,8k", 4096)]
    [InlineData("--rw=rw --rwmixread=0 --bs=4k,8k", 8192)]
    [InlineData("--rw=read --bs=8k --bs=,16k", 8192)]     // a later --bs's empty value keeps the earlier one's
    [InlineData("--rw=write --bs=8k,", 4096)]             // a trailing comma: reads of 8k, writes keep 4096, as in fio 3.33
    public void A_split_block_size_drives_the_direction_the_pattern_issues(string args, int blockSize) =>
        Assert.Equal(blockSize, BenchCommandLine.Parse(args.Split(' ')).BlockSize);

    [Theory]
    [InlineData("--rw=randrw --bs=4k,8k", "option --bs: reads of 4096 bytes and writes of 8192: the bench issues one block size for both directions of --rw=randrw, so fio's split form (READ,WRITE) needs them equal here.")]
    [InlineData("--rw=readwrite --bs=,8k", "option --bs: reads of 4096 bytes and writes of 8192: the bench issues one block size for both directions of --rw=readwrite, so fio's split form (READ,WRITE) needs them equal here.")]
    [InlineData("--bs=4k,banana", "option --bs: 'banana' is not a size (bytes, or a number with k, m, g, t or p: 4k, 1m, 2g).")]
    [InlineData("--bs=,", "option --bs: ',' is not a size (bytes, or a number with k, m, g, t or p: 4k, 1m, 2g).")]
    public void A_split_block_size_the_bench_cannot_issue_is_refused_naming_the_option(string args, string message)
    {
        var error = Assert.Throws<UsageException>(() => BenchCommandLine.Parse(args.Split(' ')));
        Assert.Equal(message, error.Message);
    }

    // fio's size=N% (parse.c: the % unit; filesetup.c: that share of the file's size, rounded
    // down to the block size; 0% and 100% the whole file). The bench refused it as "not a size".
    [Theory]
    [InlineData("50%", 50)]
    [InlineData("0%", 0)]
    [InlineData("100%", 100)]
    [InlineData("4k", null)]
    public void A_percentage_is_a_share_of_the_size(string text, int? percent) =>
        Assert.Equal(percent, Sizes.ParsePercent("size", text));

    [Theory]
    [InlineData("101%")]
    [InlineData("50.5%")]
    [InlineData("%")]
    [InlineData("-5%")]
    public void A_percentage_past_100_or_with_a_fraction_is_refused(string text)
    {
        var error = Assert.Throws<UsageException>(() => Sizes.ParsePercent("size", text));
        Assert.Equal($"option --size: '{text}' is not a share of the file's or device's size from 0% to 100%.", error.Message);
    }

    [Fact]
    public void A_percentage_waits_for_the_devices_size_and_the_null_device_has_none()
    {
        var options = BenchCommandLine.Parse("--device=file:/tmp/some-file", "--size=25%");
        Assert.Equal((25, false), (options.SizePercent, options.SizeGiven));

        // fio's null engine: "you need to specify size=".
        var error = Assert.Throws<UsageException>(() => BenchCommandLine.Parse("--size=50%"));
        Assert.Equal("option --size: 50% is a share of an existing file's or device's size, and the null device has none until --size gives it one.", error.Message);
        Assert.Throws<UsageException>(() => BenchCommandLine.Parse("--bs=50%"));
    }

    // fio's z (parse.c __handle_option): a number of zones for size, offset and io_size, used with
    // zonemode=zbd, and "'z' suffix isn't applicable" elsewhere. The bench said "not a size".
    [Fact]
    public void Z_is_fios_zone_count_and_is_refused_saying_so()
    {
        Assert.Equal("option --size: '2z' is a number of zones (fio's z suffix, for zonemode=zbd); the bench's devices are not zoned.",
            Assert.Throws<UsageException>(() => Sizes.Parse("size", "2z")).Message);
        Assert.Equal("option --bs: the z (zones) suffix isn't applicable, as in fio.",
            Assert.Throws<UsageException>(() => BenchCommandLine.Parse("--bs=2z")).Message);
    }
}
