using System.Runtime.InteropServices;

namespace ActorBlk.Testing;

/// <summary>
/// Runs code as an unprivileged user on a thread of its own, so a test running as root can still
/// meet EACCES: the raw setresuid/setresgid system calls change the credentials of the calling
/// thread only (glibc's wrappers would change the whole process), and the thread ends afterwards.
/// </summary>
public static partial class Unprivileged
{
    private const int Nobody = 65534;

    /// <summary>Runs <paramref name="action"/> as uid/gid 65534 when the process is root, as is otherwise.</summary>
    public static void Run(Action action)
    {
        Exception? failure = null;
        var thread = new Thread(() =>
        {
            try
            {
                if (Environment.UserName == "root")
                {
                    var (setresgid, setresuid) = RuntimeInformation.ProcessArchitecture == Architecture.Arm64 ? (149L, 147L) : (119L, 117L);
                    if (Syscall(setresgid, Nobody, Nobody, Nobody) != 0 || Syscall(setresuid, Nobody, Nobody, Nobody) != 0)
                    {
                        throw new InvalidOperationException($"setresuid failed: errno {Marshal.GetLastPInvokeError()}");
                    }
                }

                action();
            }
            catch (Exception ex)
            {
                failure = ex;
            }
        });
        thread.Start();
        thread.Join();
        if (failure is not null)
        {
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(failure);
        }
    }

    [LibraryImport("libc", EntryPoint = "syscall", SetLastError = true)]
    private static partial long Syscall(long number, long a1, long a2, long a3);
}
