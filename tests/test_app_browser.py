"""The web app in a real browser: headless Chromium loads the page, picks the sample clip, sees the preview, outpaints.

The screenshot is a test artifact (in the test's tmp folder; also copied to the path in
``$MOTIA_APP_SCREENSHOT`` when set, which is how docs/app.png is made). Without Chromium
and its driver the test skips, naming what to install.
"""

import os
import shutil

import pytest


def _chromium() -> tuple[str, str]:
    browser = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        missing = " and ".join(n for n, p in (("chromium", browser), ("chromedriver", driver)) if p is None)
        pytest.skip(f"no {missing} on this machine: apt-get install -y chromium chromium-driver")
    return browser, driver


@pytest.fixture
def browser(tmp_path):
    binary, driver_path = _chromium()
    webdriver = pytest.importorskip("selenium.webdriver", reason='the browser test needs selenium: pip install "motia[test]"')
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    # As root in a sandbox without network: no sandbox, no GPU, and none of Chromium's calls home.
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1280,1000", f"--user-data-dir={tmp_path / 'profile'}"):  # fmt: skip
        options.add_argument(flag)
    # An explicit driver path: Selenium Manager would otherwise try to download one.
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(120)
    yield driver
    driver.quit()


def test_page_loads_sample_clip_and_preview_appear(app_server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    url, _ = app_server
    browser.get(url)
    wait = WebDriverWait(browser, 120)
    wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, "#use-sample"))).click()

    def preview_shown(driver):
        imgs = driver.find_elements(By.CSS_SELECTOR, "#preview img")
        done = imgs and driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", imgs[0])
        return imgs[0] if done else False

    img = wait.until(preview_shown)
    size = browser.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", img)
    assert size[0] % 144 == 0 and size[0] >= 512  # the 96x64 clip + 0.25 of its width per side, scaled up
    wait.until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, "#estimate"), "64 × 144"))
    assert browser.find_elements(By.CSS_SELECTOR, "#clip video")  # the chosen clip plays in the page

    # The refine switch: tiny.yaml's mode (off) chosen; "on" puts the refine stage into the estimate, "off" takes it out.
    def refine(mode):
        return browser.find_element(By.CSS_SELECTOR, f"#refine input[type=radio][value={mode}]")

    assert "Refine at the output's resolution" in browser.find_element(By.CSS_SELECTOR, "#refine").text
    assert refine("off").is_selected() and not refine("on").is_selected()
    wait.until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, "#estimate"), "Refine off"))
    refine("on").click()
    wait.until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, "#estimate"), "Refine at the output's resolution"))
    refine("off").click()
    wait.until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, "#estimate"), "Refine off"))

    # The rest of the flow, for the picture: Adapt (trained, or a cache hit), then Outpaint.
    browser.find_element(By.CSS_SELECTOR, "#adapt").click()
    wait.until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, "#status"), "Adapter"))
    browser.find_element(By.CSS_SELECTOR, "#outpaint").click()
    wait.until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, "#status"), "Outpainted"))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#result video") and d.find_elements(By.CSS_SELECTOR, "#compare video"))

    # The whole page in one picture: grow the window to the page's height first.
    for _ in range(2):  # the first resize can reflow the page
        height, chrome = browser.execute_script(
            "return [document.documentElement.scrollHeight, window.outerHeight - window.innerHeight]")
        browser.set_window_size(1280, min(max(height, 800), 2400) + chrome)
    shot = tmp_path / "app.png"
    assert browser.save_screenshot(str(shot))
    target = os.environ.get("MOTIA_APP_SCREENSHOT")
    if target:
        shutil.copyfile(shot, target)
    from PIL import Image

    assert Image.open(shot).size[0] == 1280
