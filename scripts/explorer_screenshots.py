"""Screenshots of the explorer page (docs/explorer-*.png) for SavedModels you name, in Debian's headless chromium.

    python scripts/explorer_screenshots.py dcgan=/tmp/generative-xyz/dcgan-i17 ae=runs/latentforge/serving/stacked_ae \
        [--class-examples idx:data/mnist-sample] [--out docs]

Starts the model server on 127.0.0.1 (a local Ray), opens /ui/NAME for each model, presses what the page offers
(a sample grid and an interpolation strip for a generator; for an autoencoder, an interpolation between two
test digits picked in the page's gallery, latent arithmetic by class and an upload of a test digit) and saves one full-page PNG per model.
"""
import argparse
import os
import shutil
import sys
import tempfile

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        sys.exit("needs chromium and chromedriver: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,1400"):
        options.add_argument(argument)
    return webdriver.Chrome(options=options, service=Service(driver))


def wait(driver, condition, timeout=120):
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda d: condition(d))


def loaded(driver, element_id):
    return driver.execute_script("const i = document.getElementById(arguments[0]); return i.naturalWidth > 0;",
                                 element_id)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", metavar="NAME=DIR", help="SavedModels (or Pusher folders) to serve")
    parser.add_argument("--class-examples", default=f"idx:{os.path.join(REPO_ROOT, 'data', 'mnist-sample')}")
    parser.add_argument("--out", default=os.path.join(REPO_ROOT, "docs"))
    args = parser.parse_args()
    from selenium.webdriver.common.by import By
    from pipelines import serve_commands as commands
    from serving import server
    from tests.conftest import free_port, sample_digits
    sources = [server.directory_source(text) for text in args.models]
    options = server.ServerOptions(class_examples=commands.read_class_examples(args.class_examples))
    url = server.start(sources, options, port=free_port())
    driver = browser()
    os.makedirs(args.out, exist_ok=True)
    digit = os.path.join(tempfile.mkdtemp(), "digit.png")
    from PIL import Image
    import numpy as np
    Image.fromarray(np.round(sample_digits(1)[0, ..., 0] * 255).astype(np.uint8)).save(digit)
    try:
        for source in sources:
            driver.get(f"{url}/ui/{source.name}")
            wait(driver, lambda d: d.find_element(By.ID, "family").text)
            if driver.find_element(By.ID, "samples").is_displayed():
                wait(driver, lambda d: loaded(d, "sample-grid"))
            if driver.find_element(By.ID, "gallery").is_displayed():  # from a test 4 to a test 9, picked there
                if driver.find_element(By.ID, "ends-mode").is_displayed():  # a VAE: images, not seeds
                    from selenium.webdriver.support.ui import Select
                    Select(driver.find_element(By.ID, "ends")).select_by_value("images")
                wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#examples figure")) >= 20)
                figures = driver.find_elements(By.CSS_SELECTOR, "#examples figure")
                figures[8].click()
                figures[18].click()
            if driver.find_element(By.ID, "interpolation").is_displayed():  # seeds, or two test images
                driver.find_element(By.ID, "interpolate").click()
                wait(driver, lambda d: loaded(d, "interpolation-strip"))
            if driver.find_element(By.ID, "arithmetic").is_displayed():
                driver.find_element(By.ID, "compute").click()
                wait(driver, lambda d: loaded(d, "arithmetic-result"))
            if driver.find_element(By.ID, "anomaly").is_displayed():
                driver.find_element(By.ID, "upload").send_keys(digit)
                wait(driver, lambda d: d.find_element(By.ID, "score").text not in ("", "checking..."))
            driver.execute_script("window.scrollTo(0, 0)")  # the clicks above scrolled the page
            height = driver.execute_script("return document.body.scrollHeight")
            driver.set_window_size(1100, height + 40)
            path = os.path.join(args.out, f"explorer-{source.name}.png")
            driver.save_screenshot(path)
            print("saved", path, flush=True)
    finally:
        driver.quit()
        server.stop()


if __name__ == "__main__":
    main()
